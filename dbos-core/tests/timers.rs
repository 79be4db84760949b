//! Durable timers: the wake time is recorded once; a restarted process reads it back and waits
//! only the remainder.
mod common;

use std::time::{Duration, Instant};

use dbos_core::{Checkpoint, Error, SystemDatabase, sleep_until_ms};

#[tokio::test]
async fn durable_timer_survives_a_restart() {
    let db = common::fresh().await;
    let config = db.config().clone();
    common::new_run(&db, "wf").await;
    let before = dbos_core::now_ms();
    let wake_at = db
        .durable_timer("wf", 0, Duration::from_millis(1500))
        .await
        .expect("timer");
    assert!(wake_at >= before + 1500 && wake_at <= dbos_core::now_ms() + 1500);
    let cp = db
        .checkpoint("wf", 0)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(cp.function_name, "DBOS.sleep");
    assert_eq!(cp.output, Some(wake_at.to_string()));
    assert_eq!(cp.completed_at_ms, Some(wake_at));

    // The process "dies" part-way through the sleep.
    tokio::time::sleep(Duration::from_millis(700)).await;
    db.close().await;
    drop(db);

    // A new process replays: the same wake time whatever duration it asks for now...
    let restarted = SystemDatabase::connect(config).await.expect("reconnect");
    let replayed = restarted
        .durable_timer("wf", 0, Duration::from_secs(3600))
        .await
        .expect("replay");
    assert_eq!(replayed, wake_at);
    // ...and it sleeps only the remainder.
    let started = Instant::now();
    restarted
        .durable_sleep("wf", 0, Duration::from_secs(3600))
        .await
        .expect("sleep");
    let slept = started.elapsed();
    assert!(
        dbos_core::now_ms() >= wake_at,
        "woke before the recorded time"
    );
    assert!(
        slept < Duration::from_millis(1400),
        "slept {slept:?}: the whole duration again instead of the remainder"
    );
    // Once passed, replaying does not sleep at all.
    let started = Instant::now();
    restarted
        .durable_sleep("wf", 0, Duration::from_secs(3600))
        .await
        .expect("sleep");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(restarted.checkpoints("wf").await.expect("read").len(), 1);
}

#[tokio::test]
async fn durable_timer_position_taken_by_another_step_conflicts() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    db.append_checkpoint(
        "wf",
        &Checkpoint {
            function_id: 0,
            function_name: "activity".into(),
            output: Some("1".into()),
            ..Default::default()
        },
    )
    .await
    .expect("append");
    assert!(matches!(
        db.durable_timer("wf", 0, Duration::from_secs(1)).await,
        Err(Error::CheckpointConflict { function_id: 0, .. })
    ));
    assert!(matches!(
        db.durable_timer("ghost", 0, Duration::from_secs(1)).await,
        Err(Error::UnknownRun(_))
    ));
}

#[tokio::test]
async fn zero_duration_and_past_wake_times_return_at_once() {
    let db = common::fresh().await;
    common::new_run(&db, "wf").await;
    let started = Instant::now();
    db.durable_sleep("wf", 0, Duration::ZERO)
        .await
        .expect("sleep");
    sleep_until_ms(dbos_core::now_ms() - 10_000).await;
    sleep_until_ms(i64::MIN).await;
    assert!(started.elapsed() < Duration::from_millis(500));

    let started = Instant::now();
    sleep_until_ms(dbos_core::now_ms() + 300).await;
    assert!(started.elapsed() >= Duration::from_millis(290));
}
