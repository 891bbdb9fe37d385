//! A fault the tests inject: `PLUGBOARD_TEST_PANIC=<plugin>:<partition>:<offset>`
//! makes that partition's worker panic once, when it takes a batch holding
//! that offset and before it settles any of it, as a bug of the host
//! would. The fault matrix checks what a revive (and a revoke right after)
//! does then; unset, this costs one relaxed load per batch. (A lane's
//! batch counts too.)

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::message::Message;

static TARGET: OnceLock<Option<(String, i32, i64)>> = OnceLock::new();
static FIRED: AtomicBool = AtomicBool::new(false);

fn target() -> &'static Option<(String, i32, i64)> {
    TARGET.get_or_init(|| {
        let spec = std::env::var("PLUGBOARD_TEST_PANIC").ok()?;
        let mut parts = spec.rsplitn(3, ':');
        let offset = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let plugin = parts.next()?.to_string();
        Some((plugin, partition, offset))
    })
}

pub fn check<M: Message>(plugin: &str, partition: i32, batch: &[M]) {
    if FIRED.load(Ordering::Relaxed) {
        return;
    }
    let Some((p, part, offset)) = target() else {
        FIRED.store(true, Ordering::Relaxed);
        return;
    };
    if p == plugin
        && *part == partition
        && batch.iter().any(|m| m.offset() == *offset)
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("PLUGBOARD_TEST_PANIC: {plugin} partition {partition} offset {offset}");
    }
}
