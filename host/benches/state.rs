//! What the shared state file costs when many instances commit at once:
//! commits per second of one instance, then of 2, 6 and 12 at once (as the
//! instances of that many partitions), each commit a call's worth of writes
//! (a set and an increment of a shared key). Prints the rate and how long
//! a commit waited for the connection's lock against how long it took.
//!
//! `cargo bench -p plugboard --bench state [-- COMMITS_PER_INSTANCE]`;
//! with `STATE_BENCH_NO_READ=1` a call only sets, so no read of the store
//! waits behind another instance's commit (what group commit gains alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard::runtime::kv::{KvState, Scope, StateDb};

fn main() {
    let commits: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
    let db = StateDb::open(&dir.path().join("state.sqlite")).unwrap();
    println!(
        "{:>9} {:>14} {:>16} {:>18}",
        "instances", "commits/s", "per commit", "waited for lock"
    );
    for instances in [1, 2, 6, 12] {
        let began = Instant::now();
        let per_commit: Vec<(Duration, Duration)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..instances)
                .map(|i| {
                    let db = db.clone();
                    s.spawn(move || {
                        let mut kv = KvState::new(
                            Some(db),
                            Scope {
                                plugin: Arc::from("bench"),
                                source: Arc::from("bench"),
                            },
                            usize::MAX,
                        );
                        let (mut total, mut waited) = (Duration::ZERO, Duration::ZERO);
                        for n in 0..commits {
                            kv.set("b", format!("p{i}/{n}"), Some(vec![1; 64])).unwrap();
                            if std::env::var_os("STATE_BENCH_NO_READ").is_none() {
                                kv.increment("b", "total".into(), 1).unwrap();
                            }
                            let start = Instant::now();
                            let wait = kv.commit_timed().unwrap();
                            total += start.elapsed();
                            waited += wait;
                        }
                        (total / commits as u32, waited / commits as u32)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let elapsed = began.elapsed();
        let mean = |f: fn(&(Duration, Duration)) -> Duration| {
            per_commit.iter().map(f).sum::<Duration>() / per_commit.len() as u32
        };
        println!(
            "{instances:>9} {:>14.0} {:>16.2?} {:>18.2?}",
            (instances * commits) as f64 / elapsed.as_secs_f64(),
            mean(|p| p.0),
            mean(|p| p.1),
        );
    }
}
