//! The committed seed corpora: `INTERLINK_WRITE_SEEDS=1 cargo test --test corpus` (in fuzz/)
//! rewrites `corpus/<target>/seed-*` from real encoded values; without it the test checks
//! that they are committed and current. Either way every file in every corpus (seeds and
//! whatever fuzzing added) runs through its harness, so a committed crash reproducer
//! becomes a regression test.

use interlink_fuzz::TARGETS;
use std::path::PathBuf;

fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

#[test]
fn seeds_are_committed_and_every_corpus_file_passes() {
    let write = std::env::var_os("INTERLINK_WRITE_SEEDS").is_some();
    for t in TARGETS {
        let dir = corpus_dir(t.name);
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        if write {
            std::fs::create_dir_all(&dir).expect("create corpus dir");
            for old in std::fs::read_dir(&dir).expect("list corpus") {
                let p = old.expect("entry").path();
                if p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                {
                    std::fs::remove_file(&p).expect("remove old seed");
                }
            }
        }
        for (i, s) in seeds.iter().enumerate() {
            let path = dir.join(format!("seed-{i:02}"));
            if write {
                std::fs::write(&path, s).expect("write seed");
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (regenerate: INTERLINK_WRITE_SEEDS=1 cargo test --test corpus)",
                        path.display()
                    )
                });
                assert_eq!(
                    &on_disk,
                    s,
                    "{} is stale (regenerate the seeds)",
                    path.display()
                );
            }
        }
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("list corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("read corpus file");
            (t.run)(&data);
            files += 1;
        }
        assert!(files >= seeds.len());
    }
}
