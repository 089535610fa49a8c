"""`vitlab download NAME`: locate a data set, or fetch it with checksums.

    vitlab download fashion_mnist            # found: prints where (fast); else downloads (SHA-256 checked)
    vitlab download fashion_mnist --path DIR # look in / download into DIR

Only Fashion-MNIST is fetched automatically (it is what ``make demo`` and ``make test`` need). For the
other sets the command says where to get them and which ``root=`` layout ``get_source`` expects.
Exit status 0 when the data is there, 2 (one line on stderr) when it is not and cannot be fetched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlab.data import download as D
from vitlab.errors import ConfigError, DataError

# name -> (where to get it, what root= must hold)
MANUAL = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "the .tar.gz or its extracted cifar-10-batches-py/"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "the .tar.gz or its extracted cifar-100-python/"),
    "pets": ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/{images,annotations}.tar.gz",
             "images/ and annotations/ (both archives unpacked)"),
    "flowers102": ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/{102flowers.tgz,imagelabels.mat,setid.mat}",
                   "jpg/, imagelabels.mat and setid.mat"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="fashion_mnist (fetched automatically), digits, cifar10, cifar100, "
                                        "pets or flowers102")
    parser.add_argument("--path", default=None, help="folder to look in first and to download into")
    parser.add_argument("--no-verify", action="store_true", help="skip the content checksum of found files")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")


def run(args: argparse.Namespace) -> int:
    name = args.dataset.lower().replace("-", "_")
    if name in ("fashion_mnist", "fashionmnist"):
        return _fashion_mnist(args)
    if name == "digits":
        print("digits: bundled with scikit-learn; nothing to download")
        return 0
    if name in MANUAL:
        url, layout = MANUAL[name]
        raise DataError(f"{name} is not downloaded automatically; get {url} and pass root=<folder holding "
                        f"{layout}> to get_source('{name}', root=...)")
    raise ConfigError(f"unknown dataset {args.dataset!r}; expected fashion_mnist, digits, {', '.join(MANUAL)}")


def _fashion_mnist(args: argparse.Namespace) -> int:
    found = None
    if args.path is not None:
        path = Path(args.path).expanduser()
        if path.is_dir() and all(D.find_file(path, f[:-3]) for f in D.FASHION_MNIST_FILES):
            found = path
    else:
        found = D.locate_fashion_mnist()
    if found is not None:
        if not args.no_verify:
            D.verify_fashion_mnist(found)
        print(f"fashion_mnist: found in {found}")
        return 0
    dest = D.download_fashion_mnist(args.path, timeout=args.timeout)
    print(f"fashion_mnist: downloaded to {dest} (SHA-256 verified)")
    return 0
