//! Hostile archives through the command line: a clear error naming the archive and the entry,
//! exit 1, nothing written outside the staging area, nothing published, no staging leftovers.
//! (The full hostile corpus is in `archive_hostile.rs`; this proves the command wires it.)

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn python(script: &str, dir: &Path) {
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn hostile_archives_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    python(
        r#"
import io, tarfile, zipfile
with zipfile.ZipFile('slip.zip', 'w') as z:
    z.writestr('ok.txt', 'fine')
    z.writestr('../../escaped.txt', 'evil')
with tarfile.open('link.tar', 'w') as t:
    i = tarfile.TarInfo('lib'); i.type = tarfile.SYMTYPE; i.linkname = '../../..'; t.addfile(i)
    data = b'evil'; i = tarfile.TarInfo('lib/escaped.txt'); i.size = len(data); t.addfile(i, io.BytesIO(data))
with tarfile.open('dev.tar', 'w') as t:
    i = tarfile.TarInfo('null'); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)
with zipfile.ZipFile('bomb.zip', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('zeros', b'\0' * (64 << 20))
"#,
        tmp.path(),
    );
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("slip.zip", &[], &["slip.zip", "escaped.txt", ".."]),
        ("link.tar", &[], &["link.tar", "lib"]),
        ("dev.tar", &[], &["dev.tar", "null"]),
        (
            "bomb.zip",
            &["--max-expanded", "8M"],
            &["bomb.zip", "expands past the limit", "--max-expanded"],
        ),
    ];
    for (archive, flags, needles) in cases {
        let out = run(warmcache(&root)
            .arg("import")
            .arg(tmp.path().join(archive))
            .args(flags)
            .args(["--name", "x"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{archive}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{archive}: the error should mention {needle:?}: {stderr}"
            );
        }
        assert_eq!(
            artifact_ids(&root),
            Vec::<String>::new(),
            "{archive}: something was published"
        );
        assert_eq!(
            list(&root.join("v1/staging")),
            Vec::<String>::new(),
            "{archive}: staging leftovers"
        );
    }
    for escaped in [
        tmp.path().join("escaped.txt"),
        tmp.path().parent().unwrap().join("escaped.txt"),
    ] {
        assert!(
            !escaped.exists(),
            "a hostile archive wrote outside staging: {}",
            escaped.display()
        );
    }
    let status = json_ok(&run(warmcache(&root).args(["status", "--json"])));
    assert_eq!(status["entries"].as_array().unwrap().len(), 0);
}
