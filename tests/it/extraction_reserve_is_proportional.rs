//! The free space extraction keeps is proportional to the volume (the smaller of 512 MiB and 5%)
//! and settable: a 12-byte tar imports on a 20 MB volume; `--min-free` larger than the volume
//! refuses it, naming the reserve, the free space, `--min-free` and `[cache] min_free`; the same
//! holds for `restore`.

use std::path::Path;

use crate::support::s3_server::TestS3;
use crate::support::snapshots::{restore, snapshot};
use crate::support::*;

fn twelve_byte_tar(path: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(12);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "hello.txt", &b"hello world\n"[..])
        .unwrap();
    std::fs::write(path, builder.into_inner().unwrap()).unwrap();
}

#[test]
fn a_small_tar_imports_on_a_small_volume_and_min_free_is_settable() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let tar = tmp.path().join("small.tar");
    twelve_byte_tar(&tar);
    let out = in_namespace(
        r#"mount -t tmpfs -o size=20m tmpfs "$2" || exit 1
           "$1" --root "$2/cache" import "$3" --name small --min-free 1GiB; echo "flag-rc=$?"
           printf '[cache]\nmin_free = "1GiB"\n' > "$2/warmcache.toml"
           (cd "$2" && "$1" --root "$2/cache" import "$3" --name small); echo "config-rc=$?"
           "$1" --root "$2/cache" import "$3" --name small >/dev/null; echo "default-rc=$?""#,
        &[Path::new(env!("CARGO_BIN_EXE_warmcache")), &mnt, &tar],
    );
    assert!(out.contains("default-rc=0"), "{out}");
    assert!(out.contains("flag-rc=1"), "{out}");
    assert!(out.contains("config-rc=1"), "{out}");
    for needle in ["--min-free", "[cache] min_free", "reserve of 1.0 GiB"] {
        assert!(out.contains(needle), "`{needle}` missing from: {out}");
    }
}

#[test]
fn restore_keeps_the_reserve_asked_for() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), "content").unwrap();
    json_ok(&snapshot(&server, &root, &dir, "k", &["--strict"]));
    let target = tmp.path().join("restored");
    let out = restore(
        &server,
        &root,
        &target,
        "k",
        &["--strict", "--min-free", "1000000TiB"],
    );
    let err = json_exit(&out, 1);
    let message = err["error"].as_str().unwrap();
    assert!(
        message.contains("--min-free") && message.contains("[cache] min_free"),
        "{message}"
    );
    assert!(!target.exists(), "nothing restored");
    let ok = json_ok(&restore(&server, &root, &target, "k", &["--strict"]));
    assert_eq!(ok["status"], "restored", "{ok}");
}
