//! Readers repeatedly open and read leased and current artifacts (whole trees) while
//! `gc --max-size 0` runs in a loop in other processes and new garbage keeps arriving: zero read
//! errors, zero missing files, and the collections really removed things.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A reader process: hashes every file of the given trees in a loop until `stop` exists; prints
/// `errors=N rounds=M` and details of each error.
const READER: &str = r#"
import hashlib, os, sys
stop, trees = sys.argv[1], sys.argv[2:]
errors = rounds = 0
def digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, 'rb') as f:
                h.update(name.encode()); h.update(f.read())
    return h.hexdigest()
expected = {t: digest(t) for t in trees}
while not os.path.exists(stop):
    for t in trees:
        try:
            if not os.path.isdir(t) or digest(t) != expected[t]:
                errors += 1; print('changed or missing:', t, flush=True)
        except OSError as e:
            errors += 1; print('error:', e, flush=True)
    rounds += 1
print(f'errors={errors} rounds={rounds}', flush=True)
"#;

#[test]
fn readers_see_no_errors_while_gc_loops() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let current = json_ok(&run(warmcache(&root)
        .arg("import")
        .arg(make_tree(&tmp.path().join("a"), 200, 3000, 1))
        .args(["--name", "cur", "--json"])));
    ok(warmcache(&root)
        .arg("import")
        .arg(make_tree(&tmp.path().join("b"), 200, 3000, 2))
        .args(["--name", "lib"]));
    let leased = json_ok(&run(
        warmcache(&root).args(["path", "lib", "--lease", "1h", "--json"])
    ));
    ok(warmcache(&root)
        .arg("import")
        .arg(make_tree(&tmp.path().join("c"), 20, 3000, 3))
        .args(["--name", "lib"]));

    let stop = tmp.path().join("stop");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            Command::new("python3")
                .args(["-c", READER])
                .arg(&stop)
                .arg(current["path"].as_str().unwrap())
                .arg(leased["path"].as_str().unwrap())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 must be installed")
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut removed = 0;
    std::thread::scope(|s| {
        // New garbage keeps arriving: anonymous imports nothing protects.
        s.spawn(|| {
            let mut i = 100;
            while Instant::now() < deadline {
                ok(warmcache(&root).arg("import").arg(make_tree(
                    &tmp.path().join(format!("g{i}")),
                    30,
                    2000,
                    i,
                )));
                i += 1;
            }
        });
        // Hits on the current entry keep working.
        s.spawn(|| {
            while Instant::now() < deadline {
                assert_eq!(
                    ok(warmcache(&root).args(["path", "cur"])),
                    current["path"].as_str().unwrap()
                );
            }
        });
        let collectors: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut removed = 0;
                    while Instant::now() < deadline {
                        // Two collectors take turns on the gc lock.
                        let out = run(warmcache(&root).args(["--json", "gc", "--max-size", "0"]));
                        let report = json_ok(&out);
                        removed += report["removed"].as_array().unwrap().len();
                    }
                    removed
                })
            })
            .collect();
        removed = collectors.into_iter().map(|c| c.join().unwrap()).sum();
    });
    std::fs::write(&stop, b"").unwrap();
    for reader in readers {
        let out = reader.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("errors=0 "), "a reader saw errors: {text}");
        let rounds: u32 = text.rsplit("rounds=").next().unwrap().trim().parse().unwrap();
        assert!(rounds > 0, "the reader never finished a round: {text}");
    }
    assert!(
        removed > 0,
        "the collections removed nothing, so the test proved nothing"
    );
    assert!(Path::new(current["path"].as_str().unwrap()).exists());
    assert!(Path::new(leased["path"].as_str().unwrap()).exists());
    let verify = json_ok(&run(warmcache(&root).args(["verify", "--json"])));
    assert_eq!(
        verify["damaged"].as_array().unwrap().len() + verify["dangling"].as_array().unwrap().len(),
        0
    );
}
