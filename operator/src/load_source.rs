//! The promoter's optional Prometheus load source
//! (`spec.autoscale.source.prometheus`): one PromQL query that returns the
//! system's TPS, evaluated at each sample, and as a range query to rebuild
//! the windowed history after an operator restart.
//!
//! Parsing is pure and unit-tested; the two requests are thin. A query that
//! fails, returns no series, several series, or a value that is not a finite
//! non-negative number is an error the promoter reports in
//! `MetricsAvailable` (the phase holds: missing data never demotes), never a
//! number it trusts.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ladder_crds::scalingphase::PrometheusSource;
use serde_json::Value;

/// How long one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP client for Prometheus queries.
pub fn client() -> reqwest::Client {
    // reqwest takes the process-wide rustls provider (ring, as kube-client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn endpoint(src: &PrometheusSource, path: &str) -> String {
    format!("{}/api/v1/{path}", src.url.trim_end_matches('/'))
}

fn seconds(t: Timestamp) -> String {
    format!("{:.3}", t.as_millisecond() as f64 / 1000.0)
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    params: &[(&str, String)],
) -> Result<Value, String> {
    let url = url::Url::parse_with_params(url, params.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| format!("not a URL: {e}"))?;
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status();
    let body: Value = r
        .json()
        .await
        .map_err(|e| format!("HTTP {status}, not a Prometheus answer: {e}"))?;
    if body["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {} {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("(no message)")
        ));
    }
    Ok(body)
}

/// The query's value at `at`.
pub async fn instant(
    http: &reqwest::Client,
    src: &PrometheusSource,
    at: Timestamp,
) -> Result<f64, String> {
    let body = get(
        http,
        &endpoint(src, "query"),
        &[("query", src.query.clone()), ("time", seconds(at))],
    )
    .await?;
    parse_instant(&body)
}

/// The query's values from `start` to `end`, one every `step_secs`.
pub async fn range(
    http: &reqwest::Client,
    src: &PrometheusSource,
    start: Timestamp,
    end: Timestamp,
    step_secs: u64,
) -> Result<Vec<(Timestamp, f64)>, String> {
    let body = get(
        http,
        &endpoint(src, "query_range"),
        &[
            ("query", src.query.clone()),
            ("start", seconds(start)),
            ("end", seconds(end)),
            ("step", format!("{}s", step_secs.max(1))),
        ],
    )
    .await?;
    parse_range(&body)
}

/// A `[<unix seconds>, "<value>"]` pair.
fn sample(pair: &Value) -> Result<(Timestamp, f64), String> {
    let at = pair[0]
        .as_f64()
        .ok_or_else(|| format!("a sample without a time: {pair}"))?;
    let v: f64 = pair[1]
        .as_str()
        .ok_or_else(|| format!("a sample without a value: {pair}"))?
        .parse()
        .map_err(|_| format!("not a number: {}", pair[1]))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "the query returned {v}, not a finite, non-negative TPS"
        ));
    }
    #[allow(clippy::cast_possible_truncation)]
    let at = Timestamp::from_millisecond((at * 1000.0) as i64)
        .map_err(|e| format!("a sample at an impossible time: {e}"))?;
    Ok((at, v))
}

fn one_series<'a>(body: &'a Value, kind: &str) -> Result<&'a Value, String> {
    let result = &body["data"]["result"];
    let series = result
        .as_array()
        .ok_or_else(|| format!("no {kind} in the answer"))?;
    match series.len() {
        1 => Ok(&series[0]),
        0 => Err("the query returned no series (is the app scraped?)".into()),
        n => Err(format!(
            "the query returned {n} series; it must return one number (wrap it in sum(...))"
        )),
    }
}

/// Parses an instant query's answer: a scalar, or a vector of one sample.
pub fn parse_instant(body: &Value) -> Result<f64, String> {
    match body["data"]["resultType"].as_str() {
        Some("scalar") => sample(&body["data"]["result"]).map(|(_, v)| v),
        Some("vector") => sample(&one_series(body, "vector")?["value"]).map(|(_, v)| v),
        other => Err(format!(
            "the query returned a {}, not a number",
            other.unwrap_or("nothing")
        )),
    }
}

/// Parses a range query's answer: a matrix of one series.
pub fn parse_range(body: &Value) -> Result<Vec<(Timestamp, f64)>, String> {
    if body["data"]["resultType"] != "matrix" {
        return Err("the range query did not return a matrix".into());
    }
    let values = one_series(body, "matrix")?["values"]
        .as_array()
        .ok_or("a series without values")?;
    values.iter().map(sample).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_number_is_accepted_as_scalar_or_single_vector() {
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1_800_000_000.0, "42.5"]}});
        assert_eq!(parse_instant(&scalar), Ok(42.5));
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1_800_000_000.0, "7"]}
        ]}});
        assert_eq!(parse_instant(&vector), Ok(7.0));
    }

    #[test]
    fn anything_but_one_sane_number_is_an_error() {
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(
            parse_instant(&empty)
                .expect_err("empty")
                .contains("no series")
        );
        let two = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "a"}, "value": [1.0, "1"]},
            {"metric": {"pod": "b"}, "value": [1.0, "2"]}
        ]}});
        assert!(
            parse_instant(&two)
                .expect_err("two series")
                .contains("sum(")
        );
        for bad in ["NaN", "+Inf", "-3", "lots"] {
            let b = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, bad]}});
            assert!(parse_instant(&b).is_err(), "{bad} accepted");
        }
        let string =
            json!({"status": "success", "data": {"resultType": "string", "result": [1.0, "x"]}});
        assert!(parse_instant(&string).is_err());
    }

    #[test]
    fn a_range_gives_timed_samples() {
        let m = json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1_800_000_000.0, "1"], [1_800_000_015.5, "2.5"]]}
        ]}});
        let got = parse_range(&m).expect("parsed");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, 2.5);
        assert_eq!(got[1].0.as_millisecond(), 1_800_000_015_500);
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(parse_range(&vector).is_err());
    }
}
