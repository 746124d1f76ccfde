//! Two machines snapshot different trees to the same key at the same moment: the pointer is
//! replaced by a conditional put, so exactly one wins, the other reports the conflict (and
//! leaves the pointer alone), and the pointer names a complete snapshot that restores to the
//! winner's tree.

use std::process::Stdio;

use crate::support;
use crate::support::s3_server::TestS3;
use crate::support::snapshots::{current_manifest, objects, pointer, restore};
use crate::support::{json_ok, warmcache_s3};

const KEY: &str = "fleet/node_modules";

#[test]
fn exactly_one_of_two_concurrent_snapshots_wins() {
    let server = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("go");
    let trees: Vec<_> = (0..2)
        .map(|i| {
            let tree = support::make_tree(&tmp.path().join(format!("tree{i}")), 60, 8 * 1024, 100 + i);
            // Big, incompressible and of equal size, so each upload takes a while and neither
            // tree is colder than the other.
            std::fs::write(tree.join("big.bin"), support::Rng::new(i).bytes(24 * 1024 * 1024)).unwrap();
            tree
        })
        .collect();

    // Both processes wait at the same gate, so both read the (absent) pointer before either
    // can have finished uploading.
    let children: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, tree)| {
            let cmd = warmcache_s3(&server, &tmp.path().join(format!("cache{i}")));
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            let mut shell = std::process::Command::new("sh");
            for (name, value) in cmd.get_envs() {
                match value {
                    Some(value) => shell.env(name, value),
                    None => shell.env_remove(name),
                };
            }
            shell
                .arg("-c")
                .arg("while [ ! -e \"$0\" ]; do sleep 0.01; done; exec \"$@\"")
                .arg(&gate)
                .arg(program)
                .args(args)
                .arg("snapshot")
                .arg(tree)
                .arg("--remote")
                .arg(server.url(KEY))
                .arg("--json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::fs::write(&gate, "").unwrap();
    let reports: Vec<_> = children
        .into_iter()
        .map(|child| json_ok(&child.wait_with_output().unwrap()))
        .collect();

    let statuses: Vec<_> = reports
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    let winners: Vec<_> = reports.iter().filter(|r| r["status"] == "uploaded").collect();
    assert_eq!(winners.len(), 1, "statuses: {statuses:?}");
    assert!(
        statuses.contains(&"conflict".to_owned()),
        "statuses: {statuses:?}"
    );
    let winner = winners[0];
    let loser = reports.iter().find(|r| r["status"] == "conflict").unwrap();
    assert_eq!(
        loser["remote"]["digest"], winner["digest"],
        "the loser names who won"
    );

    // The pointer names the winner's snapshot, whose manifest and packs are complete.
    assert_eq!(pointer(&server, KEY)["digest"], winner["digest"]);
    let manifest = current_manifest(&server, KEY);
    let stored = objects(&server);
    for pack in manifest["packs"].as_array().unwrap() {
        let key = format!("{KEY}/packs/{}.tar.zst", pack["token"].as_str().unwrap());
        assert_eq!(
            stored.get(&key).map(String::as_str),
            pack["blake3"].as_str(),
            "the pack the pointer leads to is whole"
        );
    }

    let restored = tmp.path().join("restored");
    json_ok(&restore(
        &server,
        &tmp.path().join("cache-r"),
        &restored,
        KEY,
        &[],
    ));
    let winner_tree = trees
        .iter()
        .zip(&reports)
        .find(|(_, r)| r["status"] == "uploaded")
        .map(|(t, _)| t)
        .unwrap();
    assert_eq!(
        support::describe_tree(&restored),
        support::describe_tree(winner_tree)
    );
}
