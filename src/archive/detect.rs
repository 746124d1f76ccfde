//! Recognizing an archive's format from its first bytes, never from its file name.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::tar::{checksum_ok, fill};
use super::{ArchiveError, Format};

const ZIP_LOCAL: &[u8] = b"PK\x03\x04";
/// An empty zip is only its end-of-central-directory record.
const ZIP_EMPTY: &[u8] = b"PK\x05\x06";
/// The marker some tools write before the first entry of a split zip.
const ZIP_SPANNED: &[u8] = b"PK\x07\x08";
const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Recognizes the archive format of the file at `path` from its magic bytes.
///
/// `Ok(None)` means it is not an archive this module extracts (the caller treats it as a plain
/// file): that includes a gzip or zstd stream whose content is not a tar (a compressed single
/// file). A gzip or zstd stream that cannot even be decompressed is an error.
pub fn detect(path: &Path) -> Result<Option<Format>, ArchiveError> {
    let open_err = |source| ArchiveError::Open {
        archive: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let mut head = [0u8; 512];
    let n = fill(&mut file, &mut head).map_err(open_err)?;
    let head = &head[..n];
    if head.starts_with(ZIP_LOCAL) || head.starts_with(ZIP_EMPTY) || head.starts_with(ZIP_SPANNED) {
        return Ok(Some(Format::Zip));
    }
    let compressed = if head.starts_with(GZIP) {
        Some(Format::TarGz)
    } else if head.starts_with(ZSTD) {
        Some(Format::TarZst)
    } else {
        None
    };
    if let Some(format) = compressed {
        let file = File::open(path).map_err(open_err)?;
        let mut decoder: Box<dyn Read> = match format {
            Format::TarGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
            _ => Box::new(zstd::Decoder::new(file).map_err(open_err)?),
        };
        let mut block = [0u8; 512];
        let n = fill(&mut decoder, &mut block).map_err(|e| ArchiveError::NotAnArchive {
            archive: path.to_path_buf(),
            format,
            detail: format!("it starts like {format} but does not decompress: {e}"),
        })?;
        // An empty tar is all zeros; anything else must be a valid header.
        let is_tar = n == 512 && (block.iter().all(|&b| b == 0) || looks_like_tar(&block));
        return Ok(is_tar.then_some(format));
    }
    if head.len() == 512 && looks_like_tar(head) {
        return Ok(Some(Format::Tar));
    }
    Ok(None)
}

/// A tar header: not all zeros, and its checksum adds up (the ustar magic is absent from v7 tars).
fn looks_like_tar(block: &[u8]) -> bool {
    !block.iter().all(|&b| b == 0) && checksum_ok(tar::Header::from_byte_slice(block))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "hello.txt", &b"hello"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn detect_bytes(name: &str, bytes: &[u8]) -> Result<Option<Format>, ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        detect(&path)
    }

    #[test]
    fn formats_come_from_magic_bytes_not_names() {
        let tar = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("a.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"a").unwrap();
        let zip = zip.finish().unwrap().into_inner();

        // Misleading names on purpose.
        assert_eq!(detect_bytes("x.zip", &tar).unwrap(), Some(Format::Tar));
        assert_eq!(detect_bytes("x.tar", &gz).unwrap(), Some(Format::TarGz));
        assert_eq!(detect_bytes("x.tgz", &zst).unwrap(), Some(Format::TarZst));
        assert_eq!(detect_bytes("x.tar.zst", &zip).unwrap(), Some(Format::Zip));
        assert_eq!(
            detect_bytes("empty.zip", b"PK\x05\x06").unwrap(),
            Some(Format::Zip)
        );
    }

    #[test]
    fn other_files_are_not_archives() {
        assert_eq!(detect_bytes("a.tar", b"just some text\n").unwrap(), None);
        assert_eq!(detect_bytes("a.zip", b"").unwrap(), None);
        assert_eq!(detect_bytes("zeros.tar", &[0u8; 4096]).unwrap(), None);
        // 512 bytes that are not a header: the checksum does not add up.
        assert_eq!(detect_bytes("a.tar", &[b'x'; 1024]).unwrap(), None);
        // A compressed single file is a plain file to the caller.
        let zst = zstd::encode_all(&[b'y'; 2048][..], 3).unwrap();
        assert_eq!(detect_bytes("y.tar.zst", &zst).unwrap(), None);
    }

    #[test]
    fn a_broken_compressed_stream_is_an_error() {
        let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(&[0xff; 64]);
        let err = detect_bytes("x.tar.gz", &bytes).unwrap_err();
        assert!(err.to_string().contains("does not decompress"), "{err}");
    }
}
