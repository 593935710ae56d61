//! HTTP with one shared client (connections are reused, as a real requester would).

use anyhow::anyhow;
use federation::credentials::PresentationBinding;
use serde_json::{json, Value};

#[derive(Clone)]
pub(super) struct Http {
    client: reqwest::Client,
}

/// An answer: status, or no answer at all.
pub(super) enum Answer {
    Status(u16, Value),
    Transport(String),
}

impl Http {
    pub(super) fn new(connections: usize) -> anyhow::Result<Http> {
        Http::with_builder(federation::client::http_client_builder(), connections)
    }

    /// A client that waits up to `timeout` for an answer (large answers, slow builds).
    pub(super) fn patient(timeout: std::time::Duration) -> anyhow::Result<Http> {
        Http::with_builder(
            federation::client::http_client_builder().timeout(timeout),
            1,
        )
    }

    fn with_builder(builder: reqwest::ClientBuilder, connections: usize) -> anyhow::Result<Http> {
        let client = builder
            .pool_max_idle_per_host(connections.max(1))
            .build()
            .map_err(|e| anyhow!("HTTP client: {e}"))?;
        Ok(Http { client })
    }

    pub(super) async fn post(&self, url: &str, body: &Value, token: Option<&str>) -> Answer {
        self.post_offered(url, body, token).await.0
    }

    /// POSTs, and returns with the answer the challenge it offers for the next
    /// presentation (`Fedgate-Next-Challenge`), if it offers one.
    pub(super) async fn post_offered(
        &self,
        url: &str,
        body: &Value,
        token: Option<&str>,
    ) -> (Answer, Option<String>) {
        let mut req = self.client.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let next = resp
                    .headers()
                    .get("fedgate-next-challenge")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match resp.bytes().await {
                    Ok(bytes) => (
                        Answer::Status(
                            status,
                            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                        ),
                        next,
                    ),
                    Err(e) => (Answer::Transport(e.without_url().to_string()), None),
                }
            }
            Err(e) => (Answer::Transport(e.without_url().to_string()), None),
        }
    }

    async fn metrics_page(&self, base: &str) -> Option<String> {
        self.client
            .get(format!("{base}metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// The value of the counter `name` with `labels` (e.g. `result="hit"`) on a service's
    /// `/metrics` page, if it is there.
    pub(super) async fn counter(&self, base: &str, name: &str, labels: &str) -> Option<u64> {
        self.series(base, name, labels).await.map(|v| v as u64)
    }

    /// The value of the one series of `name` with exactly `labels` (as the page writes
    /// them, e.g. `domain="clinical",quantile="0.5"`).
    pub(super) async fn series(&self, base: &str, name: &str, labels: &str) -> Option<f64> {
        let page = self.metrics_page(base).await?;
        let series = format!("{name}{{{labels}}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    }

    /// The sums over every series of each of `names`, whatever their labels, read from
    /// one fetch of a service's `/metrics` page, so that related series (a histogram's
    /// count and sum) are read at one instant; `None` when a name has no series.
    pub(super) async fn series_sums<const N: usize>(
        &self,
        base: &str,
        names: [&str; N],
    ) -> Option<[f64; N]> {
        let page = self.metrics_page(base).await?;
        let mut sums = [0.0; N];
        for (sum, name) in sums.iter_mut().zip(names) {
            *sum = series_sum_on(&page, name)?;
        }
        Some(sums)
    }

    /// POSTs and returns the status and the body as it came.
    pub(super) async fn post_raw(&self, url: &str, body: &Value) -> anyhow::Result<(u16, Vec<u8>)> {
        let bytes = serde_json::to_vec(body)?;
        self.post_raw_with_type(url, bytes, "application/json")
            .await
    }

    /// POSTs `body` as `content_type`; returns the status and the raw answer.
    pub(super) async fn post_raw_with_type(
        &self,
        url: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let resp = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.without_url())?;
        Ok((status, bytes.to_vec()))
    }

    /// POSTs and insists on `expected`; any other answer is an error naming `what`.
    pub(super) async fn expect(
        &self,
        what: &str,
        url: &str,
        body: &Value,
        token: Option<&str>,
        expected: u16,
    ) -> anyhow::Result<Value> {
        match self.post(url, body, token).await {
            Answer::Status(s, v) if s == expected => Ok(v),
            Answer::Status(s, v) => Err(anyhow!(
                "{what}: HTTP {s}: {}",
                v.to_string().chars().take(300).collect::<String>()
            )),
            Answer::Transport(e) => Err(anyhow!("{what}: {e}")),
        }
    }

    pub(super) async fn challenge(&self, base: &str) -> Result<PresentationBinding, Answer> {
        match self
            .post(&format!("{base}v1/challenges"), &json!({}), None)
            .await
        {
            Answer::Status(200, body) => {
                match (body["challenge"].as_str(), body["domain"].as_str()) {
                    (Some(c), Some(d)) => Ok(PresentationBinding {
                        challenge: c.to_string(),
                        domain: d.to_string(),
                    }),
                    _ => Err(Answer::Status(200, body)),
                }
            }
            other => Err(other),
        }
    }
}

pub(super) fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// The sum over every series of `name` on a metrics page; `None` when it has none.
fn series_sum_on(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
