//! Readers never see a torn activation (docs/DESIGN.md, problem 3).
//!
//! Several reader processes checksum DEST in a tight loop while the test replaces it, over and over,
//! with one of two large binaries. With `activate` every hash a reader sees is one of the two. The
//! same harness with a naive in-place copy (truncate DEST, write the bytes) must see torn states:
//! that proves the harness is able to catch them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warmcache::activate::{ActivateOptions, LinkMode, activate};

const SIZE: usize = 32 << 20;
const READERS: usize = 3;
/// Readers stop on their own after this long even if the test dies without telling them.
const READER_LIFETIME_SECS: u32 = 90;

/// Distinct pseudo-random bytes (xorshift; quality does not matter, only that the two differ
/// everywhere, so any mix of them hashes to something else).
fn pseudo_random(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(SIZE);
    while out.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out
}

/// What a reader records for one read of `path`: `cksum`'s CRC-32 and size. Any mix of the two
/// sources matches one of theirs with odds of about 2^-32; `cksum` is used rather than
/// `sha256sum` because it is several times faster, so the readers sample many more moments.
fn checksum(path: &Path) -> String {
    let out = Command::new("cksum").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Two published (read-only) binaries in a temp "cache" and an "app" directory for DEST.
struct Setup {
    tmp: tempfile::TempDir,
    sources: [PathBuf; 2],
    contents: [Vec<u8>; 2],
    hashes: [String; 2],
    dest: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let app = tmp.path().join("app");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&app).unwrap();
    let contents = [pseudo_random(0x5eed_0001), pseudo_random(0x5eed_0002)];
    let sources = [cache.join("tool-a"), cache.join("tool-b")];
    for (path, bytes) in sources.iter().zip(&contents) {
        std::fs::write(path, bytes).unwrap();
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(path, perms).unwrap();
    }
    let hashes = [checksum(&sources[0]), checksum(&sources[1])];
    assert_ne!(hashes[0], hashes[1]);
    Setup {
        dest: app.join("tool"),
        tmp,
        sources,
        contents,
        hashes,
    }
}

/// Reader processes checksumming DEST until a stop file appears. Each writes one line per read:
/// the CRC and size, or `missing` when DEST could not be read.
struct Readers {
    children: Vec<Child>,
    outputs: Vec<PathBuf>,
    stop: PathBuf,
}

impl Readers {
    fn start(dir: &Path, dest: &Path) -> Self {
        let stop = dir.join("stop");
        let _ = std::fs::remove_file(&stop);
        let script = r#"
            end=$(( $(date +%s) + $2 ))
            while [ ! -e "$1.stop" ] && [ ! -e "$3" ] && [ "$(date +%s)" -lt "$end" ]; do
                sum=$(cksum 2>/dev/null < "$4") && echo "$sum" || echo missing
            done >> "$1"
        "#;
        let mut children = Vec::new();
        let mut outputs = Vec::new();
        for i in 0..READERS {
            let out = dir.join(format!("reader-{i}.log"));
            let _ = std::fs::remove_file(&out);
            let child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("reader")
                .arg(&out)
                .arg(READER_LIFETIME_SECS.to_string())
                .arg(&stop)
                .arg(dest)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
            outputs.push(out);
        }
        Self {
            children,
            outputs,
            stop,
        }
    }

    /// Counts of each complete line written so far.
    fn seen(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for out in &self.outputs {
            let text = std::fs::read_to_string(out).unwrap_or_default();
            // The last line may still be being written.
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            for line in complete.lines() {
                *counts.entry(line.to_string()).or_default() += 1;
            }
        }
        counts
    }

    fn stop(mut self) -> BTreeMap<String, usize> {
        std::fs::write(&self.stop, b"").unwrap();
        for child in &mut self.children {
            child.wait().unwrap();
        }
        self.children.clear();
        self.seen()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        // On a panic, tell the readers to stop (they also stop by themselves after a while).
        let _ = std::fs::write(&self.stop, b"");
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

struct Tally {
    good: [usize; 2],
    torn: usize,
    iterations: usize,
}

/// Places the two sources alternately at DEST with `place` while readers hash it; stops after at
/// least `min_iterations` once `done` says the readers saw enough, or after `limit`.
fn run(
    s: &Setup,
    min_iterations: usize,
    limit: Duration,
    mut place: impl FnMut(usize, &Path),
    done: impl Fn(&Tally) -> bool,
) -> Tally {
    let tally = |counts: &BTreeMap<String, usize>, iterations| {
        let mut t = Tally {
            good: [0, 0],
            torn: 0,
            iterations,
        };
        for (line, n) in counts {
            match s.hashes.iter().position(|h| h == line) {
                Some(i) => t.good[i] += n,
                None => t.torn += n,
            }
        }
        t
    };
    place(0, &s.dest);
    let readers = Readers::start(s.tmp.path(), &s.dest);
    let start = Instant::now();
    let mut i = 1;
    loop {
        place(i % 2, &s.dest);
        i += 1;
        // Give the readers a moment to read each version (not a timing assertion: it only makes
        // the interleavings more varied).
        std::thread::sleep(Duration::from_millis(5));
        if i >= min_iterations && (done(&tally(&readers.seen(), i)) || start.elapsed() > limit) {
            break;
        }
    }
    let counts = readers.stop();
    let t = tally(&counts, i);
    eprintln!(
        "{} placements in {:?}: {} reads of A, {} of B, {} torn or missing; lines: {:?}",
        t.iterations,
        start.elapsed(),
        t.good[0],
        t.good[1],
        t.torn,
        counts
            .iter()
            .filter(|(l, _)| !s.hashes.contains(l))
            .take(5)
            .collect::<Vec<_>>()
    );
    t
}

#[test]
fn readers_never_see_a_torn_activation() {
    let s = setup();
    // Each source in turn with a full copy and with the cheapest link (a hard link here).
    let mut modes = [LinkMode::Copy, LinkMode::Copy, LinkMode::Auto, LinkMode::Auto]
        .into_iter()
        .cycle();
    let t = run(
        &s,
        30,
        Duration::from_secs(25),
        |which, dest| {
            let opts = ActivateOptions {
                link: modes.next().unwrap(),
                hooks: Vec::new(),
            };
            activate(&s.sources[which], dest, &opts).unwrap();
        },
        |t| t.good[0] >= 60 && t.good[1] >= 60,
    );
    assert!(t.iterations >= 30);
    assert_eq!(t.torn, 0, "readers saw torn or missing states");
    assert!(t.good[0] > 0 && t.good[1] > 0, "readers saw both versions");
    // Nothing but DEST is left in its directory.
    let names: Vec<_> = std::fs::read_dir(s.dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["tool"]);
}

#[test]
fn the_harness_sees_torn_states_of_a_naive_in_place_copy() {
    let s = setup();
    let t = run(
        &s,
        1,
        Duration::from_secs(25),
        |which, dest| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(dest)
                .unwrap();
            for chunk in s.contents[which].chunks(1 << 20) {
                file.write_all(chunk).unwrap();
            }
        },
        |t| t.torn > 0,
    );
    assert!(t.torn > 0, "the harness must be able to see torn states");
}
