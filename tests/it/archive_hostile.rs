//! A hostile-archive corpus, generated here: one case per extraction rule, for every format where
//! the rule applies. Each case asserts a clear error naming the problem and that nothing was
//! written outside the staging directory.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use warmcache::archive::{self, ArchiveError, Format, LimitExceeded, Limits, Progress, UnsafeEntry};
use zip::write::SimpleFileOptions;

const TAR_FORMATS: [Format; 3] = [Format::Tar, Format::TarGz, Format::TarZst];

/// A sandbox: the archive and the staging directory live two levels below a root that the test
/// watches, so `../` and `../../` land somewhere we can see.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("work/stage/dest")).unwrap();
        std::fs::write(root.path().join("work/sentinel.txt"), b"untouched").unwrap();
        Self { root }
    }

    fn dest(&self) -> PathBuf {
        self.root.path().join("work/stage/dest")
    }

    fn archive_path(&self) -> PathBuf {
        self.root.path().join("archive.bin")
    }

    /// Every path under the root except the staging directory, with its kind and bytes.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        let dest = self.dest();
        let mut stack = vec![self.root.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == dest {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let what = if meta.is_dir() {
                    stack.push(path.clone());
                    "dir".to_string()
                } else if meta.is_file() {
                    format!("file {:?}", std::fs::read(&path).unwrap())
                } else {
                    format!("other {:?}", std::fs::read_link(&path).ok())
                };
                seen.insert(path, what);
            }
        }
        seen
    }
}

fn absolute_target() -> PathBuf {
    std::env::temp_dir().join(format!("warmcache-hostile-abs-{}", std::process::id()))
}

/// Extracts `bytes` as `format` with `limits`, expects an error, and checks that nothing outside
/// the staging directory changed.
fn expect_err(bytes: &[u8], format: Format, limits: &Limits) -> ArchiveError {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.archive_path(), bytes).unwrap();
    let before = sandbox.outside();
    let progress = |_: Progress| {};
    let result = archive::extract(
        &sandbox.archive_path(),
        format,
        &sandbox.dest(),
        limits,
        &progress,
    );
    assert_eq!(
        sandbox.outside(),
        before,
        "{format}: something was written outside the staging directory"
    );
    assert!(
        !absolute_target().exists(),
        "{format}: an absolute path was written"
    );
    let err = result.expect_err(&format!("{format}: hostile archive was accepted"));
    let text = err.to_string();
    assert!(
        text.contains("archive.bin"),
        "{format}: the message must name the archive: {text}"
    );
    err
}

fn expect_unsafe(
    bytes: &[u8],
    format: Format,
    check: impl Fn(&UnsafeEntry) -> bool,
    words: &str,
    entry: &str,
) {
    let err = expect_err(bytes, format, &Limits::default());
    let text = err.to_string();
    let problem = err
        .unsafe_entry()
        .unwrap_or_else(|| panic!("{format}: expected an unsafe entry, got: {text}"));
    assert!(check(problem), "{format}: wrong problem {problem:?}: {text}");
    assert!(text.contains(words), "{format}: message lacks `{words}`: {text}");
    assert!(
        text.contains(entry),
        "{format}: message lacks the entry `{entry}`: {text}"
    );
}

fn expect_corrupt(bytes: &[u8], format: Format, words: &str) {
    let err = expect_err(bytes, format, &Limits::default());
    let text = err.to_string();
    assert!(
        matches!(err, ArchiveError::Corrupt { .. }),
        "{format}: expected corrupt, got: {text}"
    );
    assert!(text.contains(words), "{format}: message lacks `{words}`: {text}");
}

fn expect_limit(bytes: &[u8], format: Format, limits: &Limits, check: impl Fn(&LimitExceeded) -> bool) {
    let err = expect_err(bytes, format, limits);
    match &err {
        ArchiveError::Limit { limit, .. } if check(limit) => {}
        other => panic!("{format}: expected a limit error, got: {other}"),
    }
    assert!(
        err.to_string().contains("raise the limit") || err.to_string().contains("free"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw tar writing: the tar crate's builder refuses bad names, so headers are filled in by hand.

struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }

    fn entry(mut self, name: &[u8], kind: u8, link: &[u8], declared: u64, data: &[u8]) -> Self {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_mode(0o644);
        header.set_size(declared);
        header.set_mtime(1_600_000_000);
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), b'0', b"", data.len() as u64, data)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), b'5', b"", 0, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'2', target.as_bytes(), 0, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), b'1', target.as_bytes(), 0, b"")
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn compress(tar: &[u8], format: Format) -> Vec<u8> {
    match format {
        Format::Tar => tar.to_vec(),
        Format::TarGz => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Format::TarZst => zstd::encode_all(tar, 3).unwrap(),
        Format::Zip => unreachable!(),
    }
}

fn each_tar(tar: &[u8], mut f: impl FnMut(&[u8], Format)) {
    for format in TAR_FORMATS {
        f(&compress(tar, format), format);
    }
}

// Zip writing: the zip crate writes any name; what it cannot write is patched in afterwards.

fn zip_with(build: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    build(&mut writer);
    writer.finish().unwrap().into_inner()
}

fn zip_file(writer: &mut zip::ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8]) {
    writer.start_file(name, SimpleFileOptions::default()).unwrap();
    writer.write_all(data).unwrap();
}

/// Offsets of the central-directory records (`PK\1\2`).
fn central_records(bytes: &[u8]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x01\x02")
        .map(|(i, _)| i)
        .collect()
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------

#[test]
fn parent_components_are_refused() {
    let tar = RawTar::new()
        .file("ok.txt", b"ok")
        .file("../evil.txt", b"evil")
        .finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(
            bytes,
            format,
            |p| *p == UnsafeEntry::ParentComponent,
            "`..`",
            "../evil.txt",
        );
    });
    let tar = RawTar::new().file("a/../../../evil.txt", b"evil").finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(
            bytes,
            format,
            |p| *p == UnsafeEntry::ParentComponent,
            "`..`",
            "a/../../../evil.txt",
        );
    });
    let zip = zip_with(|w| zip_file(w, "../../evil.txt", b"evil"));
    expect_unsafe(
        &zip,
        Format::Zip,
        |p| *p == UnsafeEntry::ParentComponent,
        "`..`",
        "../../evil.txt",
    );
}

#[test]
fn absolute_paths_are_refused() {
    let name = absolute_target().join("evil.txt");
    let name = name.to_str().unwrap();
    let tar = RawTar::new().file(name, b"evil").finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(
            bytes,
            format,
            |p| *p == UnsafeEntry::AbsolutePath,
            "absolute path",
            name,
        );
    });
    let zip = zip_with(|w| zip_file(w, name, b"evil"));
    expect_unsafe(
        &zip,
        Format::Zip,
        |p| *p == UnsafeEntry::AbsolutePath,
        "absolute path",
        name,
    );
}

#[test]
fn windows_drive_prefixes_and_backslashes_are_refused() {
    for name in ["C:/Windows/evil.txt", "..\\..\\evil.txt", "a\\b.txt"] {
        let tar = RawTar::new().file(name, b"evil").finish();
        each_tar(&tar, |bytes, format| {
            expect_unsafe(
                bytes,
                format,
                |p| *p == UnsafeEntry::WindowsPath,
                "Windows drive prefix",
                name,
            );
        });
        let zip = zip_with(|w| zip_file(w, name, b"evil"));
        expect_unsafe(
            &zip,
            Format::Zip,
            |p| *p == UnsafeEntry::WindowsPath,
            "backslash",
            name,
        );
    }
}

#[test]
fn escaping_symlinks_are_refused() {
    let escapes = |p: &UnsafeEntry| matches!(p, UnsafeEntry::SymlinkEscapes { .. });
    let tar = RawTar::new().symlink("link", "../../sentinel.txt").finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(bytes, format, escapes, "outside the extracted tree", "link")
    });
    // Lexically inside, really outside: `d/up` is the root, so `d/up/..` is the root's parent.
    let tar = RawTar::new()
        .dir("d")
        .symlink("d/up", "..")
        .symlink("sneaky", "d/up/..")
        .finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(bytes, format, escapes, "outside", "sneaky")
    });
    let zip = zip_with(|w| {
        w.add_symlink("a/link", "../../x", SimpleFileOptions::default())
            .unwrap();
    });
    expect_unsafe(&zip, Format::Zip, escapes, "outside the extracted tree", "a/link");
}

#[test]
fn absolute_symlink_targets_are_refused() {
    let absolute = |p: &UnsafeEntry| matches!(p, UnsafeEntry::SymlinkAbsolute { .. });
    let tar = RawTar::new().symlink("etc", "/etc").finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(bytes, format, absolute, "absolute target `/etc`", "etc")
    });
    let zip = zip_with(|w| {
        w.add_symlink("etc", "/etc", SimpleFileOptions::default())
            .unwrap();
    });
    expect_unsafe(&zip, Format::Zip, absolute, "absolute target `/etc`", "etc");
}

#[test]
fn writing_through_an_earlier_symlink_is_refused() {
    let through = |p: &UnsafeEntry| matches!(p, UnsafeEntry::ThroughSymlink { .. });
    // The link itself stays inside the tree; the attack is the later entry below it.
    let tar = RawTar::new()
        .dir("real")
        .symlink("alias", "real")
        .file("alias/payload", b"x")
        .finish();
    each_tar(&tar, |bytes, format| {
        expect_unsafe(
            bytes,
            format,
            through,
            "earlier entry (writing through a symlink)",
            "alias/payload",
        );
    });
    let zip = zip_with(|w| {
        w.add_directory("real/", SimpleFileOptions::default()).unwrap();
        w.add_symlink("alias", "real", SimpleFileOptions::default())
            .unwrap();
        zip_file(w, "alias/payload", b"x");
    });
    expect_unsafe(
        &zip,
        Format::Zip,
        through,
        "writing through a symlink",
        "alias/payload",
    );
}

#[test]
fn hardlinks_outside_the_tree_or_to_non_files_are_refused() {
    let outside = |p: &UnsafeEntry| matches!(p, UnsafeEntry::HardlinkOutside { .. });
    let not_file = |p: &UnsafeEntry| matches!(p, UnsafeEntry::HardlinkNotFile { .. });
    for target in ["../../sentinel.txt", "/etc/passwd"] {
        let tar = RawTar::new().hardlink("h", target).finish();
        each_tar(&tar, |bytes, format| {
            expect_unsafe(bytes, format, outside, "outside the extracted tree", "h")
        });
    }
    // A link to a file that only comes later, to a directory, and to a symlink.
    let later = RawTar::new()
        .hardlink("h", "later.txt")
        .file("later.txt", b"x")
        .finish();
    let dir = RawTar::new().dir("d").hardlink("h", "d").finish();
    let link = RawTar::new()
        .file("f", b"x")
        .symlink("s", "f")
        .hardlink("h", "s")
        .finish();
    for tar in [later, dir, link] {
        each_tar(&tar, |bytes, format| {
            expect_unsafe(bytes, format, not_file, "not an earlier regular file", "h");
        });
    }
}

#[test]
fn in_tree_hardlinks_are_extracted_as_links() {
    let tar = RawTar::new()
        .file("a/f.txt", b"shared")
        .hardlink("b/g.txt", "a/f.txt")
        .finish();
    for format in TAR_FORMATS {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.archive_path(), compress(&tar, format)).unwrap();
        let report = archive::extract(
            &sandbox.archive_path(),
            format,
            &sandbox.dest(),
            &Limits::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(report.files, 2);
        assert_eq!(std::fs::read(sandbox.dest().join("b/g.txt")).unwrap(), b"shared");
    }
}

#[test]
fn device_files_fifos_and_sockets_are_refused() {
    for (kind, name) in [(b'3', "character device"), (b'4', "block device"), (b'6', "FIFO")] {
        let tar = RawTar::new().entry(b"dev", kind, b"", 0, b"").finish();
        each_tar(&tar, |bytes, format| {
            expect_unsafe(
                bytes,
                format,
                |p| matches!(p, UnsafeEntry::Special { .. }),
                name,
                "dev",
            );
        });
    }
    for (mode, name) in [
        (0o010_644u32, "FIFO"),
        (0o020_644, "character device"),
        (0o140_644, "socket"),
    ] {
        let mut zip = zip_with(|w| zip_file(w, "dev", b""));
        let at = central_records(&zip)[0];
        zip[at + 5] = 3; // made by: Unix, so the external attributes hold a mode
        put_u32(&mut zip, at + 38, mode << 16);
        expect_unsafe(
            &zip,
            Format::Zip,
            |p| matches!(p, UnsafeEntry::Special { .. }),
            name,
            "dev",
        );
    }
}

#[test]
fn duplicate_entries_are_refused() {
    let dup = |p: &UnsafeEntry| matches!(p, UnsafeEntry::Duplicate { .. });
    let cases = [
        RawTar::new().file("a.txt", b"1").file("a.txt", b"2").finish(),
        RawTar::new().file("a.txt", b"1").file("./a.txt", b"2").finish(),
        RawTar::new().file("x", b"1").dir("x").finish(),
        RawTar::new().file("x", b"1").file("x/y", b"2").finish(),
        RawTar::new().dir("x").file("x", b"1").finish(),
    ];
    for tar in cases {
        each_tar(&tar, |bytes, format| {
            expect_unsafe(bytes, format, dup, "duplicate entry", "")
        });
    }
    let zip = zip_with(|w| {
        zip_file(w, "a.txt", b"1");
        zip_file(w, "./a.txt", b"2");
    });
    expect_unsafe(&zip, Format::Zip, dup, "duplicate entry", "./a.txt");
    let zip = zip_with(|w| {
        zip_file(w, "x", b"1");
        w.add_directory("x/", SimpleFileOptions::default()).unwrap();
    });
    expect_unsafe(&zip, Format::Zip, dup, "duplicate entry", "x/");
    // Exactly the same name twice: the zip writer refuses, so rename `ab` to `aa` in place.
    let mut zip = zip_with(|w| {
        zip_file(w, "aa", b"1");
        zip_file(w, "ab", b"2");
    });
    let positions: Vec<usize> = zip
        .windows(2)
        .enumerate()
        .filter(|(_, w)| *w == b"ab")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        positions.len(),
        2,
        "the name appears in the local and central headers"
    );
    for at in positions {
        zip[at + 1] = b'a';
    }
    expect_unsafe(
        &zip,
        Format::Zip,
        |p| *p == UnsafeEntry::DuplicateName,
        "duplicate entry",
        "",
    );
}

#[test]
fn a_declared_size_that_differs_from_the_data_is_refused() {
    // tar: a header that promises more than the stream holds.
    let mut tar = RawTar::new().entry(b"big.bin", b'0', b"", 10_000, &[7u8; 1024]).0;
    tar.truncate(512 + 1000);
    each_tar(&tar, |bytes, format| {
        expect_corrupt(
            bytes,
            format,
            "declares 10000 bytes but the stream ends after 1000",
        )
    });
    // zip: the central directory claims more bytes than the data decompresses to (CRC intact).
    let data = vec![42u8; 5000];
    let mut zip = zip_with(|w| zip_file(w, "f.bin", &data));
    let at = central_records(&zip)[0];
    put_u32(&mut zip, at + 24, 6000);
    expect_corrupt(&zip, Format::Zip, "declares 6000 bytes but holds 5000");
    // ... and fewer than the data decompresses to.
    put_u32(&mut zip, at + 24, 100);
    expect_corrupt(&zip, Format::Zip, "declared size");
}

#[test]
fn a_zip_bomb_is_stopped_by_the_limits() {
    // 64 MiB of zeros deflate to about 64 KB.
    let zip = zip_with(|w| {
        w.start_file("bomb.bin", SimpleFileOptions::default()).unwrap();
        io::copy(&mut io::repeat(0).take(64 << 20), w).unwrap();
    });
    assert!(zip.len() < 400 << 10, "the bomb is small: {}", zip.len());
    let small = Limits {
        max_total_bytes: 8 << 20,
        ..Limits::default()
    };
    expect_limit(&zip, Format::Zip, &small, |l| {
        matches!(l, LimitExceeded::TotalBytes { .. })
    });
    let ratio = Limits {
        ratio_grace_bytes: 1 << 20,
        ..Limits::default()
    };
    expect_limit(&zip, Format::Zip, &ratio, |l| {
        matches!(l, LimitExceeded::Ratio { .. })
    });
    let full_disk = Limits {
        min_free_bytes: Some(u64::MAX / 2),
        ..Limits::default()
    };
    expect_limit(&zip, Format::Zip, &full_disk, |l| {
        matches!(l, LimitExceeded::FreeSpace { .. })
    });

    // Lying about the size does not help: the declared total passes, the bytes do not.
    let mut liar = zip.clone();
    let at = central_records(&liar)[0];
    put_u32(&mut liar, at + 24, 1000);
    let err = expect_err(&liar, Format::Zip, &small);
    assert!(
        matches!(err, ArchiveError::Corrupt { .. } | ArchiveError::Limit { .. }),
        "{err}"
    );
}

/// A tar.zst of one 64 MiB file of zeros, written as a stream (no size is declared up front).
fn tar_zst_bomb() -> Vec<u8> {
    let encoder = zstd::Encoder::new(Vec::new(), 3).unwrap();
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_size(64 << 20);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "bomb.bin", io::repeat(0).take(64 << 20))
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_tar_zst_bomb_is_stopped_while_streaming() {
    let bomb = tar_zst_bomb();
    assert!(bomb.len() < 100 << 10, "the bomb is small: {}", bomb.len());
    let small = Limits {
        max_total_bytes: 8 << 20,
        ..Limits::default()
    };
    expect_limit(&bomb, Format::TarZst, &small, |l| {
        matches!(l, LimitExceeded::TotalBytes { .. })
    });
    let ratio = Limits {
        ratio_grace_bytes: 1 << 20,
        ..Limits::default()
    };
    expect_limit(&bomb, Format::TarZst, &ratio, |l| {
        matches!(l, LimitExceeded::Ratio { .. })
    });
    let full_disk = Limits {
        min_free_bytes: Some(u64::MAX / 2),
        ..Limits::default()
    };
    expect_limit(&bomb, Format::TarZst, &full_disk, |l| {
        matches!(l, LimitExceeded::FreeSpace { .. })
    });
}

#[test]
fn too_many_entries_are_refused() {
    let mut tar = RawTar::new();
    for i in 0..50 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let tar = tar.finish();
    let few = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    each_tar(&tar, |bytes, format| {
        expect_limit(bytes, format, &few, |l| {
            matches!(l, LimitExceeded::Entries { max: 10 })
        });
    });
    let zip = zip_with(|w| (0..50).for_each(|i| zip_file(w, &format!("f{i}"), b"")));
    expect_limit(&zip, Format::Zip, &few, |l| {
        matches!(l, LimitExceeded::Entries { max: 10 })
    });
}

#[test]
fn an_oversized_extension_header_is_refused_before_it_is_read() {
    // A pax header declaring 4 GiB: reading it into memory would be a memory bomb.
    let tar = RawTar::new()
        .entry(b"PaxHeaders/x", b'x', b"", 4 << 30, b"")
        .finish();
    each_tar(&tar, |bytes, format| {
        let err = expect_err(bytes, format, &Limits::default());
        assert!(
            err.to_string().contains("extension header of 4294967296 bytes"),
            "{err}"
        );
    });
}

#[test]
fn a_file_that_is_not_an_archive_is_refused() {
    let text = b"This is a README, not an archive.\n".repeat(40);
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.archive_path(), &text).unwrap();
    assert_eq!(archive::detect(&sandbox.archive_path()).unwrap(), None);
    for format in [Format::Tar, Format::TarGz, Format::TarZst, Format::Zip] {
        let err = expect_err(&text, format, &Limits::default());
        assert!(
            matches!(err, ArchiveError::NotAnArchive { .. }),
            "{format}: {err}"
        );
        assert!(
            err.to_string().contains(&format!("not a valid {format} archive")),
            "{err}"
        );
    }
}

#[test]
fn truncated_archives_are_refused() {
    let mut tar = RawTar::new();
    for i in 0..20 {
        tar = tar.file(
            &format!("dir/file{i}.txt"),
            format!("contents of file {i}\n").repeat(200).as_bytes(),
        );
    }
    let tar = tar.finish();
    // Cut in the middle of the compressed stream.
    for format in TAR_FORMATS {
        let whole = compress(&tar, format);
        let half = &whole[..whole.len() / 2];
        let err = expect_err(half, format, &Limits::default());
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{format}: {err}");
        assert!(err.to_string().contains("truncated"), "{format}: {err}");
    }
    // Cut exactly at a header boundary, so only the missing end-of-archive marker tells.
    let cut = &tar[..tar.len() - 1024];
    expect_corrupt(cut, Format::Tar, "end-of-archive marker");
    // A gzip stream that lost its trailer (checksum and length).
    let gz = compress(&tar, Format::TarGz);
    expect_corrupt(&gz[..gz.len() - 8], Format::TarGz, "truncated");
}

#[test]
fn a_corrupt_zip_fails_its_crc_check() {
    let data = b"some file contents that matter\n".repeat(100);
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut zip = zip_with(|w| {
        w.start_file("f.txt", stored).unwrap();
        w.write_all(&data).unwrap();
    });
    // Flip bytes in the middle of the stored data.
    let at = zip.windows(9).position(|w| w == b"some file").unwrap() + 500;
    zip[at] ^= 0xff;
    zip[at + 1] ^= 0x55;
    expect_corrupt(&zip, Format::Zip, "CRC-32");
    // A deflated entry with flipped bytes fails too (CRC or a broken deflate stream).
    let mut zip = zip_with(|w| zip_file(w, "f.txt", &data));
    let mid = zip.len() / 4;
    zip[mid] ^= 0xff;
    let err = expect_err(&zip, Format::Zip, &Limits::default());
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
}

#[test]
fn in_tree_relative_symlinks_are_kept() {
    // A macOS-style framework bundle.
    let tar = RawTar::new()
        .dir("Fw.framework")
        .dir("Fw.framework/Versions")
        .file("Fw.framework/Versions/A/Fw", b"binary")
        .symlink("Fw.framework/Versions/Current", "A")
        .symlink("Fw.framework/Fw", "Versions/Current/Fw")
        .finish();
    let zip = zip_with(|w| {
        zip_file(w, "Fw.framework/Versions/A/Fw", b"binary");
        w.add_symlink("Fw.framework/Versions/Current", "A", SimpleFileOptions::default())
            .unwrap();
        w.add_symlink(
            "Fw.framework/Fw",
            "Versions/Current/Fw",
            SimpleFileOptions::default(),
        )
        .unwrap();
    });
    let mut cases: Vec<(Vec<u8>, Format)> = TAR_FORMATS.iter().map(|&f| (compress(&tar, f), f)).collect();
    cases.push((zip, Format::Zip));
    for (bytes, format) in cases {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.archive_path(), &bytes).unwrap();
        assert_eq!(archive::detect(&sandbox.archive_path()).unwrap(), Some(format));
        let calls = AtomicU64::new(0);
        let progress = |_: Progress| {
            calls.fetch_add(1, Ordering::Relaxed);
        };
        let report = archive::extract(
            &sandbox.archive_path(),
            format,
            &sandbox.dest(),
            &Limits::default(),
            &progress,
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        let dest = sandbox.dest();
        assert_eq!(
            std::fs::read_link(dest.join("Fw.framework/Versions/Current")).unwrap(),
            Path::new("A")
        );
        assert_eq!(
            std::fs::read(dest.join("Fw.framework/Fw")).unwrap(),
            b"binary",
            "{format}"
        );
        assert_eq!(report.symlinks, 2, "{format}");
        assert_eq!(report.files, 1, "{format}");
        assert!(
            calls.load(Ordering::Relaxed) >= 1,
            "{format}: progress was never reported"
        );
    }
}
