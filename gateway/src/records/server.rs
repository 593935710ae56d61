//! The organization's own FHIR server as the record source.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::*;

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
}

impl FhirServer {
    pub fn new(base: &str, dev_mode: bool) -> Result<FhirServer, RecordError> {
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
        Ok(FhirServer {
            base,
            client: federation::client::http_client(),
            dev_mode,
            max_pages: 100,
            max_response_bytes: 32 * 1024 * 1024,
        })
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

    /// GET `url` as FHIR JSON; `Ok(None)` on 404 and 410.
    async fn get(
        &self,
        url: &reqwest::Url,
        what: &'static str,
    ) -> Result<Option<Value>, RecordError> {
        federation::client::loopback_only_http(url, self.dev_mode)?;
        // reqwest errors name the URL, whose query may hold an identifier: drop it.
        let req_err = |e: reqwest::Error| RecordError::Request {
            what,
            detail: e.without_url().to_string(),
        };
        let mut resp = self
            .client
            .get(url.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/fhir+json, application/json",
            )
            .send()
            .await
            .map_err(req_err)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(RecordError::Status {
                status: status.as_u16(),
                what,
            });
        }
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(RecordError::TooLarge { what, limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(req_err)? {
            if body.len() + chunk.len() > limit {
                return Err(RecordError::TooLarge { what, limit });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| RecordError::Malformed {
                what,
                detail: e.to_string(),
            })
    }

    /// Every resource of a search, following `next` links on the same origin.
    async fn search(
        &self,
        first: reqwest::Url,
        what: &'static str,
    ) -> Result<Vec<Value>, RecordError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..self.max_pages {
            let Some(bundle) = self.get(&url, what).await? else {
                return Ok(out);
            };
            if bundle["resourceType"] != "Bundle" {
                return Err(RecordError::Malformed {
                    what,
                    detail: "not a Bundle".into(),
                });
            }
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                if entry["search"]["mode"]
                    .as_str()
                    .is_some_and(|m| m == "outcome")
                {
                    continue;
                }
                if entry["resource"].is_object() {
                    out.push(entry["resource"].clone());
                }
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
        let found = self.search(url, "patient search").await?;
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

    async fn read(&self, ty: &str, id: &str) -> Result<Option<Value>, RecordError> {
        if !is_type_name(ty) || !is_fhir_id(id) {
            return Ok(None);
        }
        let url = self.url(&format!("{ty}/{id}"))?;
        let resource = self.get(&url, "resource read").await?;
        Ok(resource.filter(|r| r["resourceType"] == ty && r["id"] == id))
    }

    pub async fn patient_resources(
        &self,
        patient_id: &str,
        types: &[String],
    ) -> Result<Vec<Value>, RecordError> {
        check_patient_id(patient_id)?;
        check_types(types)?;
        let wanted: HashSet<&str> = types.iter().map(String::as_str).collect();
        let mut record = Vec::new();
        let mut seen = HashSet::new();
        if wanted.contains("Patient") {
            record.extend(self.read("Patient", patient_id).await?);
        }
        let mut searched = BTreeSet::new();
        for ty in types {
            if ty == "Patient" || SHARED_TYPES.contains(&ty.as_str()) || !searched.insert(ty) {
                continue;
            }
            let mut url = self.url(ty)?;
            url.query_pairs_mut().append_pair("patient", patient_id);
            for r in self.search(url, "compartment search").await? {
                // Only what really is in this patient's compartment, once.
                let in_compartment = r["resourceType"] == ty.as_str()
                    && compartment_patients(&r).contains(patient_id)
                    && r["id"]
                        .as_str()
                        .is_some_and(|id| seen.insert(format!("{ty}/{id}")));
                if in_compartment {
                    record.push(r);
                }
            }
        }
        // Shared resources by reference, read one by one (as `add_referenced` does).
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
                let Some(resource) = self.read(&ty, &id).await? else {
                    continue;
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
        let found = self.search(url, "patient list").await?;
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
            .get(&url, "patient count")
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
