"""Where weights come from: the download cache (``download``) and the catalogue of published checkpoints
(``catalog``). The one checkpoint resolver (``resolve(ref) -> WeightsRef``) lands here too."""
