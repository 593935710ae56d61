//! The organization's own FHIR server as the record source.
//!
//! What it asks: the server's CapabilityStatement once (`metadata`, logged); then
//! `Patient/{id}/$everything` with `_type` and `_count` when the server declares that
//! operation, or else `?patient=` searches per type with `_count` (the server may answer
//! with fewer per page), a few types at a time, following `next` links on the server's
//! own origin. What it bounds: the pages per search, the bytes of one response, and across
//! all of one exchange's reads a byte and a resource budget and a deadline below the
//! service's request timeout. What it retries: a read answered 429 or 503, twice, after
//! the server's `Retry-After` (at most 5 s) or a short backoff. What it refuses, failing
//! closed: a Patient read that returns another patient or resource, a compartment search
//! that returns another patient's resource or another type.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;

use super::*;

/// Resources asked for per search page (`_count`).
pub const DEFAULT_PAGE_SIZE: usize = 1000;
/// Bytes of all responses of one exchange together.
pub const DEFAULT_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// Resources of one exchange together.
pub const DEFAULT_BUDGET_RESOURCES: usize = 100_000;
/// Type searches in flight at once for one exchange.
pub const SEARCH_CONCURRENCY: usize = 4;
/// How long one exchange's reads may take together (the service's request timeout is 30 s
/// by default: the requester must get a 504 from us, not a timeout of its own).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// Retries of a read answered 429 or 503.
const RETRIES: usize = 2;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long one request may take, all of its body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A FHIR R4 server reached over HTTP(S) with the fedgate client rules (no redirects,
/// timeouts, https only but for loopback in dev mode). `next` links are followed only to
/// the server's own origin and up to a page cap; responses are size-limited.
#[derive(Debug, Clone)]
pub struct FhirServer {
    base: reqwest::Url,
    client: reqwest::Client,
    dev_mode: bool,
    max_pages: usize,
    max_response_bytes: usize,
    page_size: usize,
    budget_bytes: usize,
    budget_resources: usize,
    deadline: Duration,
    /// Whether to use `$everything` when the server declares it.
    use_everything: bool,
    /// What the server declared, read once (again after a failed read).
    capabilities: Arc<tokio::sync::OnceCell<Capabilities>>,
    /// SMART Backend Services: every request carries its access token.
    smart: Option<Arc<smart::SmartClient>>,
}

/// What a FHIR server's CapabilityStatement says that the record reads can use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `fhirVersion`, e.g. `4.0.1`.
    pub fhir_version: Option<String>,
    /// `software.name` and `software.version`.
    pub software: Option<String>,
    /// The server declares Patient `$everything`.
    pub everything: bool,
    /// Types the server declares a `search-type` interaction for.
    pub searchable: BTreeSet<String>,
}

impl Capabilities {
    /// Reads a CapabilityStatement; anything missing is "not declared".
    pub fn from_statement(statement: &Value) -> Capabilities {
        let rest = statement["rest"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["mode"] == "server");
        let resources: Vec<&Value> = rest
            .map(|r| r["resource"].as_array().into_iter().flatten().collect())
            .unwrap_or_default();
        let is_everything = |op: &Value| {
            op["name"].as_str().map(|n| n.trim_start_matches('$')) == Some("everything")
                || op["definition"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("/Patient-everything"))
        };
        let patient_ops = resources
            .iter()
            .filter(|r| r["type"] == "Patient")
            .flat_map(|r| r["operation"].as_array().into_iter().flatten());
        let system_ops = rest
            .into_iter()
            .flat_map(|r| r["operation"].as_array().into_iter().flatten())
            .filter(|op| {
                op["definition"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("/Patient-everything"))
            });
        let everything = patient_ops.chain(system_ops).any(is_everything);
        let searchable = resources
            .iter()
            .filter(|r| {
                r["interaction"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|i| i["code"] == "search-type")
            })
            .filter_map(|r| r["type"].as_str().map(str::to_string))
            .collect();
        let software = statement["software"]["name"].as_str().map(|name| {
            match statement["software"]["version"].as_str() {
                Some(v) => format!("{name} {v}"),
                None => name.to_string(),
            }
        });
        Capabilities {
            fhir_version: statement["fhirVersion"].as_str().map(str::to_string),
            software,
            everything,
            searchable,
        }
    }
}

/// What one exchange's reads have used so far (shared by its concurrent searches).
struct Budget {
    bytes: AtomicUsize,
    resources: AtomicUsize,
    max_bytes: usize,
    max_resources: usize,
}

impl Budget {
    fn spend(&self, bytes: usize, resources: usize) -> Result<(), RecordError> {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let r = self.resources.fetch_add(resources, Ordering::Relaxed) + resources;
        if b > self.max_bytes {
            return Err(RecordError::Budget(format!("{} bytes", self.max_bytes)));
        }
        if r > self.max_resources {
            return Err(RecordError::Budget(format!(
                "{} resources",
                self.max_resources
            )));
        }
        Ok(())
    }
}

impl FhirServer {
    pub fn new(base: &str, dev_mode: bool) -> Result<FhirServer, RecordError> {
        FhirServer::connect(base, dev_mode, &smart::FhirAuth::default())
    }

    /// [`FhirServer::new`] authenticating as `auth` says: a client certificate (mutual
    /// TLS), SMART Backend Services access tokens, or both. The key files are read here:
    /// a missing or unprotected one fails now, not at the first exchange.
    pub fn connect(
        base: &str,
        dev_mode: bool,
        auth: &smart::FhirAuth,
    ) -> Result<FhirServer, RecordError> {
        let mut base = reqwest::Url::parse(base).map_err(|e| RecordError::Url(e.to_string()))?;
        federation::client::loopback_only_http(&base, dev_mode)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(RecordError::Url(
                "the base URL has a query or fragment".into(),
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = auth.http_client()?;
        let smart = auth
            .smart
            .as_ref()
            .map(|s| smart::SmartClient::new(s, &base, client.clone(), dev_mode))
            .transpose()?
            .map(Arc::new);
        Ok(FhirServer {
            base,
            client,
            dev_mode,
            max_pages: 100,
            max_response_bytes: 32 * 1024 * 1024,
            page_size: DEFAULT_PAGE_SIZE,
            budget_bytes: DEFAULT_BUDGET_BYTES,
            budget_resources: DEFAULT_BUDGET_RESOURCES,
            deadline: DEFAULT_DEADLINE,
            use_everything: true,
            capabilities: Arc::new(tokio::sync::OnceCell::new()),
            smart,
        })
    }

    /// Never uses `$everything`, even where the server declares it (type searches only).
    pub fn without_everything(mut self) -> FhirServer {
        self.use_everything = false;
        self
    }

    /// The server's CapabilityStatement, read once and logged. A server that does not
    /// answer is asked again next time; until then nothing optional is used.
    pub async fn capabilities(&self) -> Result<Capabilities, RecordError> {
        self.capabilities
            .get_or_try_init(|| async {
                let url = self.url("metadata")?;
                // Only a failed read is asked again: a server without a statement
                // declares nothing optional, and that will not change.
                let statement = self
                    .get(&url, "capability statement", None)
                    .await?
                    .filter(|s| s["resourceType"] == "CapabilityStatement");
                let Some(statement) = statement else {
                    tracing::warn!(
                        "the FHIR server has no CapabilityStatement at metadata; \
                         using type searches only"
                    );
                    return Ok(Capabilities::default());
                };
                let caps = Capabilities::from_statement(&statement);
                if caps
                    .fhir_version
                    .as_deref()
                    .is_some_and(|v| !v.starts_with("4.0"))
                {
                    tracing::warn!(
                        fhir_version = caps.fhir_version.as_deref(),
                        "the FHIR server declares another FHIR version than R4 (4.0.x)"
                    );
                }
                tracing::info!(
                    software = caps.software.as_deref(),
                    fhir_version = caps.fhir_version.as_deref(),
                    everything = caps.everything,
                    searchable_types = caps.searchable.len(),
                    "FHIR server capabilities"
                );
                Ok(caps)
            })
            .await
            .cloned()
    }

    /// Changes the per-exchange budget (bytes and resources over all reads) and deadline.
    pub fn with_budget(mut self, bytes: usize, resources: usize, deadline: Duration) -> FhirServer {
        self.budget_bytes = bytes;
        self.budget_resources = resources;
        self.deadline = deadline;
        self
    }

    /// Changes `_count` of searches.
    pub fn with_page_size(mut self, page_size: usize) -> FhirServer {
        self.page_size = page_size.clamp(1, 10_000);
        self
    }

    fn budget(&self) -> Budget {
        Budget {
            bytes: AtomicUsize::new(0),
            resources: AtomicUsize::new(0),
            max_bytes: self.budget_bytes,
            max_resources: self.budget_resources,
        }
    }

    /// Changes the page cap and the per-response size limit.
    pub fn with_limits(mut self, max_pages: usize, max_response_bytes: usize) -> FhirServer {
        self.max_pages = max_pages.max(1);
        self.max_response_bytes = max_response_bytes;
        self
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, RecordError> {
        self.base
            .join(path)
            .map_err(|e| RecordError::Url(e.to_string()))
    }

    /// GET `url` as FHIR JSON; `Ok(None)` on 404 and 410. A 429 or 503 is tried again
    /// after the server's `Retry-After` (capped) or a short backoff.
    async fn get(
        &self,
        url: &reqwest::Url,
        what: &'static str,
        budget: Option<&Budget>,
    ) -> Result<Option<Value>, RecordError> {
        use backon::BackoffBuilder as _;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_times(RETRIES)
            .build();
        let mut renewed = false;
        loop {
            match self.get_once(url, what, budget).await {
                Ok(found) => return Ok(found),
                Err(Fetch::Fail(e)) => return Err(e),
                // A token refused once is replaced once; a fresh one refused is final.
                Err(Fetch::Unauthorized(token)) => match &self.smart {
                    Some(smart) if !renewed => {
                        smart.invalidate(&token).await;
                        renewed = true;
                    }
                    _ => return Err(smart::SmartError::TokenRejected { what }.into()),
                },
                Err(Fetch::Retry { status, after }) => match delays.next() {
                    Some(backoff) => tokio::time::sleep(after.unwrap_or(backoff)).await,
                    None => return Err(RecordError::Status { status, what }),
                },
            }
        }
    }

    /// One GET: `Err(Fetch::Retry)` when the server asks to be asked again later.
    async fn get_once(
        &self,
        url: &reqwest::Url,
        what: &'static str,
        budget: Option<&Budget>,
    ) -> Result<Option<Value>, Fetch> {
        federation::client::loopback_only_http(url, self.dev_mode)
            .map_err(|e| Fetch::Fail(e.into()))?;
        // reqwest errors name the URL, whose query may hold an identifier: drop it. A
        // server that does not answer in time is a timeout (504), not a failure (503).
        let req_err = |e: reqwest::Error| {
            if e.is_timeout() {
                return Fetch::Fail(RecordError::Timeout(REQUEST_TIMEOUT.as_secs()));
            }
            Fetch::Fail(RecordError::Request {
                what,
                detail: e.without_url().to_string(),
            })
        };
        let mut request = self
            .client
            .get(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .header(
                reqwest::header::ACCEPT,
                "application/fhir+json, application/json",
            );
        let token = match &self.smart {
            Some(smart) => Some(smart.token().await.map_err(|e| Fetch::Fail(e.into()))?),
            None => None,
        };
        if let Some(token) = &token {
            request = request.bearer_auth(token.secret());
        }
        let mut resp = request.send().await.map_err(req_err)?;
        let status = resp.status();
        if let Some(token) = token {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(Fetch::Unauthorized(token));
            }
            if status == reqwest::StatusCode::FORBIDDEN {
                return Err(Fetch::Fail(
                    smart::SmartError::Forbidden {
                        what,
                        granted: token.scope().to_string(),
                    }
                    .into(),
                ));
            }
        }
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
        {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
            return Err(Fetch::Retry {
                status: status.as_u16(),
                after,
            });
        }
        if !status.is_success() {
            return Err(Fetch::Fail(RecordError::Status {
                status: status.as_u16(),
                what,
            }));
        }
        let limit = self.max_response_bytes;
        let too_large = || Fetch::Fail(RecordError::TooLarge { what, limit });
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(req_err)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            if let Some(b) = budget {
                b.spend(chunk.len(), 0).map_err(Fetch::Fail)?;
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            Fetch::Fail(RecordError::Malformed {
                what,
                detail: e.to_string(),
            })
        })
    }

    /// Every resource of a search, following `next` links on the same origin.
    async fn search(
        &self,
        first: reqwest::Url,
        what: &'static str,
        budget: Option<&Budget>,
    ) -> Result<Vec<Value>, RecordError> {
        self.search_keeping(first, what, budget, false).await
    }

    /// [`Self::search`], keeping entries marked `include` when `includes`.
    async fn search_keeping(
        &self,
        first: reqwest::Url,
        what: &'static str,
        budget: Option<&Budget>,
        includes: bool,
    ) -> Result<Vec<Value>, RecordError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..self.max_pages {
            let Some(bundle) = self.get(&url, what, budget).await? else {
                return Ok(out);
            };
            if bundle["resourceType"] != "Bundle" {
                return Err(RecordError::Malformed {
                    what,
                    detail: "not a Bundle".into(),
                });
            }
            let before = out.len();
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                // Outcomes are the server's notes; includes are what we did not ask for,
                // but for `$everything`, which may mark what it adds as included.
                let mode = entry["search"]["mode"].as_str();
                if mode == Some("outcome") || (mode == Some("include") && !includes) {
                    continue;
                }
                if entry["resource"].is_object() {
                    out.push(entry["resource"].clone());
                }
            }
            if let Some(b) = budget {
                b.spend(0, out.len() - before)?;
            }
            let next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str());
            let Some(next) = next else {
                return Ok(out);
            };
            let next = url
                .join(next)
                .map_err(|_| RecordError::Paging("the next link is not a URL".into()))?;
            if next.origin() != self.base.origin() {
                return Err(RecordError::Paging(
                    "the next link leads to another origin; refusing to follow it".into(),
                ));
            }
            url = next;
        }
        Err(RecordError::Paging(format!(
            "more than {} pages; refusing an incomplete answer",
            self.max_pages
        )))
    }

    pub async fn find_patient(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut().append_pair(
            "identifier",
            &format!("{}|{}", escape_token(system), escape_token(value)),
        );
        let found = self.search(url, "patient search", None).await?;
        let ids: BTreeSet<&str> = found
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            // The server's matching is not trusted: the identifier must be there.
            .filter(|r| patient_identifiers(r).contains(&(system, value)))
            .filter_map(|r| r["id"].as_str())
            .filter(|id| is_fhir_id(id))
            .collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.into_iter().next().map(str::to_string)),
            _ => Err(RecordError::Ambiguous),
        }
    }

    /// `ty/id`, or `None` when the server has none. An answer that is another resource
    /// fails closed.
    async fn read(
        &self,
        ty: &str,
        id: &str,
        budget: &Budget,
    ) -> Result<Option<Value>, RecordError> {
        if !is_type_name(ty) || !is_fhir_id(id) {
            return Ok(None);
        }
        let url = self.url(&format!("{ty}/{id}"))?;
        let Some(resource) = self.get(&url, "resource read", Some(budget)).await? else {
            return Ok(None);
        };
        budget.spend(0, 1)?;
        if resource["resourceType"] != ty || resource["id"] != id {
            return Err(RecordError::Inconsistent {
                what: "resource read",
                detail: format!("a read of a {ty} returned another resource"),
            });
        }
        Ok(Some(resource))
    }

    /// The patient's resources of `types` (see the module documentation), within the
    /// deadline and budget of one exchange.
    pub async fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        check_patient_id(patient_id)?;
        check_types(types)?;
        let budget = self.budget();
        tokio::time::timeout(self.deadline, self.fetch_record(patient_id, types, &budget))
            .await
            .map_err(|_| RecordError::Timeout(self.deadline.as_secs()))?
    }

    async fn fetch_record(
        &self,
        patient_id: &str,
        types: &[String],
        budget: &Budget,
    ) -> Result<Vec<Value>, RecordError> {
        let wanted: HashSet<&str> = types.iter().map(String::as_str).collect();
        let everything =
            self.use_everything && self.capabilities().await.is_ok_and(|c| c.everything);
        let tried = if everything {
            match self.everything(patient_id, &wanted, budget).await {
                Ok(found) => Some(found),
                // A server may declare `$everything` and still refuse it to this client
                // (its scopes name types, not the operation) or not implement it for
                // this patient: the type searches ask the same question.
                Err(e) if e.is_refusal() => {
                    tracing::warn!(error = %e, "Patient $everything refused; using type searches");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let (record, shared) = if let Some(found) = tried {
            found
        } else {
            let record = self
                .type_searches(patient_id, types, &wanted, budget)
                .await?;
            (record, HashMap::new())
        };
        self.add_referenced(record, shared, patient_id, &wanted, budget)
            .await
    }

    /// The patient's compartment by `Patient/{id}/$everything?_type=…`: every resource
    /// must be the patient or belong to them; shared resources come back aside, to be
    /// kept only where the record refers to them.
    async fn everything(
        &self,
        patient_id: &str,
        wanted: &HashSet<&str>,
        budget: &Budget,
    ) -> Result<(Vec<Value>, HashMap<(String, String), Value>), RecordError> {
        let mut url = self.url(&format!("Patient/{patient_id}/$everything"))?;
        // The Patient is always asked for: an answer without it did not work.
        let mut types: Vec<&str> = wanted.iter().copied().collect();
        if !wanted.contains("Patient") {
            types.push("Patient");
        }
        types.sort_unstable();
        url.query_pairs_mut()
            .append_pair("_type", &types.join(","))
            .append_pair("_count", &self.page_size.to_string());
        let found = self
            .search_keeping(url, "patient $everything", Some(budget), true)
            .await?;
        let mut record = Vec::new();
        let mut shared = HashMap::new();
        let mut seen = HashSet::new();
        if !found
            .iter()
            .any(|r| r["resourceType"] == "Patient" && r["id"] == patient_id)
        {
            return Err(RecordError::EverythingRefused(
                "the answer does not hold the patient".into(),
            ));
        }
        for r in found {
            let (Some(ty), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
                continue;
            };
            // `_type` is a request; what was not asked for is not kept.
            if !wanted.contains(ty) || !seen.insert((ty.to_string(), id.to_string())) {
                continue;
            }
            if ty == "Patient" {
                if id != patient_id {
                    return Err(RecordError::Inconsistent {
                        what: "patient $everything",
                        detail: "the answer holds another Patient".into(),
                    });
                }
                record.push(r);
            } else if SHARED_TYPES.contains(&ty) {
                shared.insert((ty.to_string(), id.to_string()), r);
            } else {
                let owners = compartment_patients(&r);
                if owners.contains(patient_id) {
                    record.push(r);
                } else if !owners.is_empty() {
                    return Err(RecordError::Inconsistent {
                        what: "patient $everything",
                        detail: format!("the answer holds a {ty} of another patient"),
                    });
                }
                // In the compartment only by a link this gateway does not count (a
                // performer, an author): not part of the record, as in the embedded
                // store.
            }
        }
        Ok((record, shared))
    }

    /// The patient's resources by `?patient=` searches, a few types at a time.
    async fn type_searches(
        &self,
        patient_id: &str,
        types: &[String],
        wanted: &HashSet<&str>,
        budget: &Budget,
    ) -> Result<Vec<Value>, RecordError> {
        let mut record = Vec::new();
        let mut seen = HashSet::new();
        if wanted.contains("Patient") {
            record.extend(self.read("Patient", patient_id, budget).await?);
        }
        let searched: BTreeSet<&str> = types
            .iter()
            .map(String::as_str)
            .filter(|ty| *ty != "Patient" && !SHARED_TYPES.contains(ty))
            .collect();
        let mut urls = Vec::new();
        for ty in &searched {
            let mut url = self.url(ty)?;
            url.query_pairs_mut()
                .append_pair("patient", patient_id)
                .append_pair("_count", &self.page_size.to_string());
            urls.push((ty.to_string(), url));
        }
        let mut results = futures::stream::iter(urls)
            .map(|(ty, url): (String, reqwest::Url)| async move {
                let found = self.search(url, "compartment search", Some(budget)).await;
                (ty, found)
            })
            .buffered(SEARCH_CONCURRENCY);
        while let Some((ty, found)) = results.next().await {
            for r in found? {
                // A search for this patient's resources of this type returns exactly
                // those: anything else means the server answered another question.
                if r["resourceType"] != ty.as_str()
                    || !compartment_patients(&r).contains(patient_id)
                {
                    return Err(RecordError::Inconsistent {
                        what: "compartment search",
                        detail: format!(
                            "a {ty} search returned a resource of another type or patient"
                        ),
                    });
                }
                let Some(id) = r["id"].as_str() else {
                    continue;
                };
                // Pages may overlap while the server's data changes: once each.
                if seen.insert(format!("{ty}/{id}")) {
                    record.push(r);
                }
            }
        }
        drop(results);
        Ok(record)
    }

    /// Shared resources the record refers to, of the types asked for: from `shared` when
    /// the server sent them already, else read one by one (as the embedded store does).
    async fn add_referenced(
        &self,
        mut record: Vec<Value>,
        mut shared: HashMap<(String, String), Value>,
        patient_id: &str,
        wanted: &HashSet<&str>,
        budget: &Budget,
    ) -> Result<Vec<Value>, RecordError> {
        let mut seen_refs: HashSet<(String, String)> = record
            .iter()
            .filter_map(|r| {
                Some((
                    r["resourceType"].as_str()?.to_string(),
                    r["id"].as_str()?.to_string(),
                ))
            })
            .collect();
        let mut next = 0;
        let mut added = 0;
        while next < record.len() && added < MAX_REFERENCED {
            let mut refs = Vec::new();
            references(&record[next], &mut refs);
            next += 1;
            for (ty, id) in refs {
                if ty == "Patient"
                    || !wanted.contains(ty.as_str())
                    || !seen_refs.insert((ty.clone(), id.clone()))
                {
                    continue;
                }
                let resource = match shared.remove(&(ty.clone(), id.clone())) {
                    Some(r) => r,
                    None => match self.read(&ty, &id, budget).await? {
                        Some(r) => r,
                        None => continue,
                    },
                };
                let owners = compartment_patients(&resource);
                if owners.is_empty() || owners.contains(patient_id) {
                    record.push(resource);
                    added += 1;
                }
            }
        }
        Ok(record)
    }

    pub async fn patient_ids(&self) -> Result<Vec<String>, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut()
            .append_pair("_elements", "id")
            .append_pair("_count", "500");
        let found = self.search(url, "patient list", None).await?;
        Ok(found
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect())
    }

    pub async fn count(&self) -> Result<usize, RecordError> {
        let mut url = self.url("Patient")?;
        url.query_pairs_mut().append_pair("_summary", "count");
        let bundle = self
            .get(&url, "patient count", None)
            .await?
            .unwrap_or(Value::Null);
        bundle["total"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(RecordError::Malformed {
                what: "patient count",
                detail: "no total".into(),
            })
    }
}

/// How one GET ended other than with an answer.
enum Fetch {
    /// 429 or 503: ask again, after `after` when the server said.
    Retry {
        status: u16,
        after: Option<Duration>,
    },
    /// 401 to a SMART access token: replace it and ask once more.
    Unauthorized(smart::AccessToken),
    Fail(RecordError),
}

/// FHIR token search escaping of `|`, `,`, `$` and `\`.
pub(crate) fn escape_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capability_statements() {
        let hapi_like = json!({
            "resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "software": {"name": "Example FHIR", "version": "8.1"},
            "rest": [{"mode": "server", "resource": [
                {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "operation": [{"name": "everything",
                   "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]},
                {"type": "Observation", "interaction": [{"code": "search-type"}]},
                {"type": "Binary", "interaction": [{"code": "read"}]}
            ]}]
        });
        let caps = Capabilities::from_statement(&hapi_like);
        assert!(caps.everything);
        assert_eq!(caps.fhir_version.as_deref(), Some("4.0.1"));
        assert_eq!(caps.software.as_deref(), Some("Example FHIR 8.1"));
        assert_eq!(
            caps.searchable,
            BTreeSet::from(["Patient".to_string(), "Observation".to_string()])
        );
        // Declared at the system level only, by its canonical definition.
        let system_level = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server",
            "operation": [{"name": "patient-everything",
              "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]}]});
        assert!(Capabilities::from_statement(&system_level).everything);
        // Another resource's `everything` (Encounter) and client-mode rests do not count.
        let other = json!({"resourceType": "CapabilityStatement", "rest": [
            {"mode": "client", "resource": [{"type": "Patient", "operation": [{"name": "everything"}]}]},
            {"mode": "server", "resource": [{"type": "Encounter", "operation": [{"name": "everything"}]}]}]});
        assert!(!Capabilities::from_statement(&other).everything);
        assert_eq!(
            Capabilities::from_statement(&json!({})),
            Capabilities::default()
        );
    }
}
