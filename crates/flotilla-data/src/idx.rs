//! IDX files (the MNIST/Fashion-MNIST binary format) and the Fashion-MNIST loader.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (`0x08` =
//! unsigned byte), the number of dimensions — then one `u32` per dimension
//! and the data. Images are magic `0x00000803` (`[n, rows, cols]`), labels
//! `0x00000801` (`[n]`).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;

/// Magic number of an unsigned-byte, 3-dimensional IDX file (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, 1-dimensional IDX file (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Images decoded from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` pixel bytes, row-major.
    pub pixels: Vec<u8>,
}

fn header(bytes: &[u8], magic: u32, file: &str) -> Result<Vec<usize>, DataError> {
    let ndim = (magic & 0xff) as usize;
    let head_len = 4 + 4 * ndim;
    if bytes.len() < head_len {
        return Err(DataError::malformed(
            file,
            format!(
                "truncated IDX header ({} bytes, need {head_len})",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| {
        u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let found = word(0);
    if found != magic {
        return Err(DataError::malformed(
            file,
            format!("bad IDX magic 0x{found:08x}, expected 0x{magic:08x}"),
        ));
    }
    let dims: Vec<usize> = (1..=ndim).map(|i| word(i) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|data| data.checked_add(head_len))
        .ok_or_else(|| DataError::malformed(file, "IDX dimensions overflow"))?;
    if bytes.len() != expected {
        return Err(DataError::malformed(
            file,
            format!(
                "IDX dimensions {dims:?} need {expected} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    Ok(dims)
}

/// Parses an (uncompressed) IDX image file.
pub fn parse_idx_images(bytes: &[u8], file: &str) -> Result<IdxImages, DataError> {
    let dims = header(bytes, IDX_IMAGES_MAGIC, file)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Parses an (uncompressed) IDX label file.
pub fn parse_idx_labels(bytes: &[u8], file: &str) -> Result<Vec<u8>, DataError> {
    header(bytes, IDX_LABELS_MAGIC, file)?;
    Ok(bytes[8..].to_vec())
}

fn read_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut out)
        .map_err(|e| {
            DataError::malformed(
                path.display().to_string(),
                format!("cannot decompress: {e}"),
            )
        })?;
    Ok(out)
}

/// Builds a dataset from IDX images and labels: features `[1, rows, cols]`
/// scaled to `[0, 1]`, labels checked to be below `num_classes`.
pub fn images_to_dataset(
    images: &IdxImages,
    labels: &[u8],
    num_classes: usize,
    file: &str,
) -> Result<Dataset, DataError> {
    if images.count != labels.len() {
        return Err(DataError::malformed(
            file,
            format!("{} images but {} labels", images.count, labels.len()),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(DataError::malformed(
            file,
            format!("label {bad} is not below {num_classes}"),
        ));
    }
    Ok(Dataset {
        features: images
            .pixels
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect(),
        feature_shape: vec![1, images.rows, images.cols],
        labels: labels.iter().map(|&l| u32::from(l)).collect(),
        num_classes,
        groups: None,
        group_names: Vec::new(),
    })
}

fn load_part(dir: &Path, images: &str, labels: &str, count: usize) -> Result<Dataset, DataError> {
    let img_path = dir.join(images);
    let lbl_path = dir.join(labels);
    let img = parse_idx_images(&read_gz(&img_path)?, &img_path.display().to_string())?;
    let lbl = parse_idx_labels(&read_gz(&lbl_path)?, &lbl_path.display().to_string())?;
    if img.rows != 28 || img.cols != 28 || img.count != count {
        return Err(DataError::malformed(
            img_path.display().to_string(),
            format!(
                "expected {count} images of 28x28, found {} of {}x{}",
                img.count, img.rows, img.cols
            ),
        ));
    }
    images_to_dataset(&img, &lbl, 10, &lbl_path.display().to_string())
}

/// Loads Fashion-MNIST from `dir` (= `data_dir/fashion-mnist`), official split.
pub(crate) fn load_fashion_mnist(dir: &Path) -> Result<TrainTest, DataError> {
    Ok(TrainTest {
        train: load_part(
            dir,
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            60_000,
        )?,
        test: load_part(
            dir,
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            10_000,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut b = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [count, rows, cols] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend((0..count * rows * cols).map(|i| (i % 256) as u8));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    #[test]
    fn parses_tiny_idx() {
        let img = parse_idx_images(&idx_images(3, 2, 2), "t").expect("valid");
        assert_eq!((img.count, img.rows, img.cols), (3, 2, 2));
        assert_eq!(img.pixels.len(), 12);
        let lbl = parse_idx_labels(&idx_labels(&[0, 9, 4]), "t").expect("valid");
        let ds = images_to_dataset(&img, &lbl, 10, "t").expect("valid");
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.feature_shape, vec![1, 2, 2]);
        assert_eq!(ds.labels, vec![0, 9, 4]);
        assert!((ds.features[5] - 5.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let mut img = idx_images(3, 2, 2);
        img.pop();
        assert!(matches!(
            parse_idx_images(&img, "t"),
            Err(DataError::Malformed { .. })
        ));
        let mut long = idx_images(3, 2, 2);
        long.push(0);
        assert!(parse_idx_images(&long, "t").is_err());
        assert!(parse_idx_images(&[0, 0, 8], "t").is_err());
        assert!(parse_idx_images(&[], "t").is_err());
        assert!(parse_idx_images(b"garbage garbage garbage", "t").is_err());
        // labels file where images are expected and vice versa
        assert!(parse_idx_images(&idx_labels(&[1, 2]), "t").is_err());
        assert!(parse_idx_labels(&idx_images(1, 1, 1), "t").is_err());
        // huge dimensions must not allocate or overflow
        let mut huge = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            huge.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(parse_idx_images(&huge, "t").is_err());
        // count mismatch and out-of-range labels
        let im = parse_idx_images(&idx_images(2, 1, 1), "t").expect("valid");
        assert!(images_to_dataset(&im, &[1], 10, "t").is_err());
        assert!(images_to_dataset(&im, &[1, 10], 10, "t").is_err());
    }

    #[test]
    fn fashion_mnist_if_present() {
        let dir = crate::test_data_dir();
        if !crate::fetch::is_present(crate::DatasetName::FashionMnist, &dir) {
            eprintln!(
                "note: fashion-mnist not fetched in {}; skipping",
                dir.display()
            );
            return;
        }
        let tt =
            crate::load(crate::DatasetName::FashionMnist, &dir, &Default::default()).expect("load");
        assert_eq!(tt.train.len(), 60_000);
        assert_eq!(tt.test.len(), 10_000);
        assert_eq!(tt.train.feature_shape, vec![1, 28, 28]);
        let mut hist = [0usize; 10];
        for &l in &tt.train.labels {
            hist[l as usize] += 1;
        }
        assert_eq!(hist, [6000; 10]);
    }
}
