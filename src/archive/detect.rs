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

/// The archive format a file name claims (`.zip`, `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`,
/// `.tzst`, case-insensitive), if any. Only used to refuse a file whose content is not what its
/// name says (an HTML error page saved as `bundle.zip`): the format extracted always comes from
/// the content ([`detect`]).
pub fn format_from_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    [
        (".tar.gz", Format::TarGz),
        (".tgz", Format::TarGz),
        (".tar.zst", Format::TarZst),
        (".tzst", Format::TarZst),
        (".tar", Format::Tar),
        (".zip", Format::Zip),
    ]
    .into_iter()
    .find(|(ext, _)| name.ends_with(ext) && name.len() > ext.len())
    .map(|(_, format)| format)
}

/// Whether the file is an empty tar as `tar` writes it: nothing but zero blocks (at least the two
/// of the end-of-archive marker). Only a file *named* `.tar` is taken for one, since a run of
/// zeros is also what many other files (a blank disk image) look like.
pub fn is_empty_tar(path: &Path) -> std::io::Result<bool> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < 1024 || len % 512 != 0 {
        return Ok(false);
    }
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = fill(&mut file, &mut buf)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        if n < buf.len() {
            return Ok(true);
        }
    }
}

/// What a file that is not an archive looks like, for messages: "an HTML page", "text",
/// "gzip-compressed data that is not a tar archive", ...
pub fn describe_content(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return "unreadable".to_owned();
    };
    let mut head = [0u8; 512];
    let Ok(n) = fill(&mut file, &mut head) else {
        return "unreadable".to_owned();
    };
    let head = &head[..n];
    if head.is_empty() {
        return "an empty file".to_owned();
    }
    if head.iter().all(|&b| b == 0) {
        return "zero bytes only".to_owned();
    }
    if head.starts_with(GZIP) {
        return "gzip-compressed data that is not a tar archive".to_owned();
    }
    if head.starts_with(ZSTD) {
        return "zstd-compressed data that is not a tar archive".to_owned();
    }
    let text = String::from_utf8_lossy(head);
    let start = text.trim_start().to_ascii_lowercase();
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        return "an HTML page (an error page saved under the archive's name?)".to_owned();
    }
    if start.starts_with("<?xml") {
        return "an XML document (an error response saved under the archive's name?)".to_owned();
    }
    let printable = head
        .iter()
        .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || b >= 0x20);
    if printable && std::str::from_utf8(head).is_ok() {
        return format!(
            "text starting with {:?}",
            text.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect::<String>()
        );
    }
    "binary data of an unknown format".to_owned()
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
    fn names_claim_formats_and_content_is_described() {
        assert_eq!(format_from_name(Path::new("d/B.TGZ")), Some(Format::TarGz));
        assert_eq!(format_from_name(Path::new("x.tar.zst")), Some(Format::TarZst));
        assert_eq!(format_from_name(Path::new("x.tzst")), Some(Format::TarZst));
        assert_eq!(format_from_name(Path::new("x.tar")), Some(Format::Tar));
        assert_eq!(format_from_name(Path::new("x.zip")), Some(Format::Zip));
        assert_eq!(format_from_name(Path::new(".zip")), None);
        assert_eq!(format_from_name(Path::new("x.txt")), None);
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("p.zip");
        std::fs::write(&page, "  <!DOCTYPE html><html>404</html>").unwrap();
        assert!(describe_content(&page).contains("HTML"));
        let zeros = dir.path().join("z.tar");
        std::fs::write(&zeros, [0u8; 10240]).unwrap();
        assert!(is_empty_tar(&zeros).unwrap());
        std::fs::write(&zeros, [0u8; 1000]).unwrap();
        assert!(!is_empty_tar(&zeros).unwrap());
    }

    #[test]
    fn a_broken_compressed_stream_is_an_error() {
        let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(&[0xff; 64]);
        let err = detect_bytes("x.tar.gz", &bytes).unwrap_err();
        assert!(err.to_string().contains("does not decompress"), "{err}");
    }
}
