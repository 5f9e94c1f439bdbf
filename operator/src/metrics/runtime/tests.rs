use super::*;

fn key(name: &str) -> Key {
    Key {
        namespace: Some("ns".into()),
        name: name.into(),
    }
}

#[test]
fn requeue_durations_are_read_back_from_actions() {
    for d in [
        Duration::from_secs(300),
        Duration::from_millis(100),
        Duration::from_millis(1500),
        Duration::from_micros(7),
        Duration::from_nanos(3),
        Duration::ZERO,
    ] {
        let got = requeue_after(&Action::requeue(d)).expect("a duration");
        assert!(
            got.abs_diff(d) < Duration::from_nanos(2),
            "{d:?} read back as {got:?}"
        );
    }
    assert_eq!(requeue_after(&Action::await_change()), None);
}

#[test]
fn results_are_labelled_like_controller_runtime() {
    let ok = |a: Action| -> Result<Action, ()> { Ok(a) };
    assert_eq!(result_label(&ok(Action::await_change())), "success");
    assert_eq!(
        result_label(&ok(Action::requeue(Duration::from_secs(5)))),
        "requeue_after"
    );
    assert_eq!(
        result_label(&ok(Action::requeue(Duration::ZERO))),
        "requeue"
    );
    assert_eq!(result_label::<()>(&Err(())), "error");
}

#[test]
fn the_queue_merges_triggers_and_counts_what_is_due() {
    let mut q = Queue::default();
    let t0 = Instant::now();
    assert!(q.trigger(key("a"), t0));
    assert!(!q.trigger(key("a"), t0), "a second trigger merges");
    assert!(q.trigger(key("b"), t0));
    assert_eq!(q.sample(t0, None).0, 2);
    let (waited, _) = q.start(key("a"), t0 + Duration::from_millis(10));
    assert_eq!(waited, Some(Duration::from_millis(10)));
    assert_eq!(q.sample(t0, None).0, 1, "a running object is not queued");
    // A trigger while running: queued again only once it ends.
    assert!(q.trigger(key("a"), t0 + Duration::from_millis(20)));
    assert_eq!(q.sample(t0 + Duration::from_millis(20), None).0, 1);
    let took = q.finish(&key("a"), t0 + Duration::from_millis(30));
    assert_eq!(took, Some(Duration::from_millis(20)));
    assert_eq!(q.sample(t0 + Duration::from_millis(30), None).0, 2);
}

#[test]
fn a_requeue_is_queued_when_due_and_an_earlier_trigger_wins() {
    let mut q = Queue::default();
    let t0 = Instant::now();
    let _ = q.start(key("a"), t0);
    let _ = q.finish(&key("a"), t0);
    q.requeue(key("a"), t0, Duration::from_secs(30));
    assert_eq!(q.sample(t0, None).0, 0, "not due yet");
    assert_eq!(q.sample(t0 + Duration::from_secs(31), None).0, 1);
    // The delayed entry is counted as an add when it starts.
    let (_, delayed) = q.start(key("a"), t0 + Duration::from_secs(32));
    assert!(delayed);
    let _ = q.finish(&key("a"), t0 + Duration::from_secs(32));
    q.requeue(
        key("a"),
        t0 + Duration::from_secs(32),
        Duration::from_secs(300),
    );
    assert!(
        q.trigger(key("a"), t0 + Duration::from_secs(40)),
        "a trigger before the requeue adds it now"
    );
    assert_eq!(q.sample(t0 + Duration::from_secs(40), None).0, 1);
    // A later requeue does not push an earlier due time back.
    q.requeue(
        key("a"),
        t0 + Duration::from_secs(40),
        Duration::from_secs(300),
    );
    assert_eq!(q.sample(t0 + Duration::from_secs(40), None).0, 1);
}

#[test]
fn objects_gone_from_the_store_leave_the_queue() {
    let mut q = Queue::default();
    let t0 = Instant::now();
    assert!(q.trigger(key("a"), t0));
    assert!(q.trigger(key("gone"), t0));
    let alive: HashSet<Key> = [key("a")].into_iter().collect();
    assert_eq!(q.sample(t0, Some(&alive)).0, 1);
    assert!(!q.entries.contains_key(&key("gone")));
}

fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test]
async fn the_wrapped_reconciler_exports_controller_runtime_series() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut registry = Registry::default();
    let rt = Arc::new(Runtime::new("scalingphase", &mut registry));
    rt.set_max_concurrency(8);
    let cm = |name: &str| {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        Arc::new(c)
    };
    // Two objects triggered; one reconciles fine, one fails and backs off.
    let events = futures::stream::iter([
        Ok::<_, std::io::Error>(cm("a").as_ref().clone()),
        Ok(cm("b").as_ref().clone()),
    ]);
    let seen: Vec<_> = rt.triggers(events).collect().await;
    assert_eq!(seen.len(), 2);
    rt.refresh();
    assert_eq!(
        value(
            &scrape(&registry),
            r#"workqueue_depth{controller="scalingphase",name="scalingphase"}"#
        ),
        2.0
    );
    let mut reconcile = rt.reconciler(|obj: Arc<ConfigMap>, _ctx: Arc<()>| async move {
        if obj.metadata.name.as_deref() == Some("a") {
            Ok(Action::requeue(Duration::from_secs(300)))
        } else {
            Err(std::io::Error::other("boom"))
        }
    });
    let policy = rt.error_policy(|_: Arc<ConfigMap>, _: &std::io::Error, _: Arc<()>| {
        Action::requeue(Duration::from_secs(1))
    });
    assert!(reconcile(cm("a"), Arc::new(())).await.is_ok());
    let err = reconcile(cm("b"), Arc::new(())).await.expect_err("b fails");
    let _ = policy(cm("b"), &err, Arc::new(()));
    rt.refresh();
    let text = scrape(&registry);
    for (series, want) in [
        (
            r#"controller_runtime_reconcile_total{controller="scalingphase",result="requeue_after"}"#,
            1.0,
        ),
        (
            r#"controller_runtime_reconcile_total{controller="scalingphase",result="error"}"#,
            1.0,
        ),
        (
            r#"controller_runtime_reconcile_total{controller="scalingphase",result="success"}"#,
            0.0,
        ),
        (
            r#"controller_runtime_reconcile_errors_total{controller="scalingphase"}"#,
            1.0,
        ),
        (
            r#"controller_runtime_reconcile_time_seconds_count{controller="scalingphase"}"#,
            2.0,
        ),
        (
            r#"controller_runtime_active_workers{controller="scalingphase"}"#,
            0.0,
        ),
        (
            r#"controller_runtime_max_concurrent_reconciles{controller="scalingphase"}"#,
            8.0,
        ),
        (
            r#"workqueue_depth{controller="scalingphase",name="scalingphase"}"#,
            0.0,
        ),
        (
            r#"workqueue_adds_total{controller="scalingphase",name="scalingphase"}"#,
            2.0,
        ),
        (
            r#"workqueue_retries_total{controller="scalingphase",name="scalingphase"}"#,
            1.0,
        ),
        (
            r#"workqueue_queue_duration_seconds_count{controller="scalingphase",name="scalingphase"}"#,
            2.0,
        ),
    ] {
        assert_eq!(value(&text, series), want, "{series}");
    }
    assert!(text.contains("# TYPE controller_runtime_reconcile_time_seconds histogram"));
    assert!(text.contains("# TYPE workqueue_depth gauge"));
    rt.rest_request("200", "127.0.0.1:6443", "GET");
    assert_eq!(
        value(
            &scrape(&registry),
            r#"rest_client_requests_total{code="200",host="127.0.0.1:6443",method="GET"}"#
        ),
        1.0
    );
}
