//! `serve`'s catalog: server-side HTML for browsers, no JavaScript. `GET /` lists the
//! repositories, `/ui/repo/<name>` a repository's tags, `/ui/bundle/<name>:<tag>` a
//! bundle: tasks, parameters and bytes, backbone, adapter, validation metrics,
//! provenance, lineage, signatures and the `vmt-hub pull` command. Both lists take a
//! search (`?q=`: repositories by name; tags by tag or task name, ignoring case) and come
//! in pages (`?n=` rows, 100 unless given, at most 1000; `?page=`, from 1), with a plain
//! GET form for the search and links to the previous and next page.
//!
//! Everything a pushed bundle carries is untrusted: every value goes through maud's
//! `html!`, which escapes it, and the pages are sent with a Content-Security-Policy
//! that allows no script at all (defence in depth). The pages sit behind the same auth
//! as the API: with `--token`, a browser is asked for it (Basic auth).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::ServerState;
use crate::bundle::{component_params, BundleConfig};
use crate::oci::Manifest;

/// The catalog's path prefix (never under `/v2/`).
pub(super) const UI: &str = "/ui/";

/// Rows per page unless `?n=` says otherwise.
const PAGE_ROWS: usize = 100;

/// The most rows `?n=` may ask for.
const MAX_PAGE_ROWS: usize = 1000;

/// The longest search accepted, in bytes.
const MAX_SEARCH: usize = 256;

/// A list's query: `?q=SEARCH&n=ROWS&page=P`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Substring searched for, ignoring case.
    #[serde(default)]
    q: String,
    /// Rows per page.
    n: Option<usize>,
    /// Page, from 1.
    page: Option<usize>,
}

impl ListQuery {
    /// Parses a query string; `Err` is the page that says what is wrong with it.
    fn parse(query: Option<&str>) -> Result<Self, Box<Response>> {
        let q: Self = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| bad_request(&format!("the query: {e}")))?;
        if q.q.len() > MAX_SEARCH {
            return Err(bad_request(&format!(
                "a search of more than {MAX_SEARCH} bytes"
            )));
        }
        if q.n.is_some_and(|n| n == 0 || n > MAX_PAGE_ROWS) {
            return Err(bad_request(&format!("n must be 1 to {MAX_PAGE_ROWS}")));
        }
        if q.page == Some(0) {
            return Err(bad_request("pages count from 1"));
        }
        Ok(q)
    }

    fn rows(&self) -> usize {
        self.n.unwrap_or(PAGE_ROWS)
    }

    /// Whether `text` holds the search, ignoring case.
    fn matches(&self, text: &str) -> bool {
        text.to_lowercase().contains(&self.q.to_lowercase())
    }

    /// This page's slice of `items`, and the markup that says where it is and links to
    /// the neighbouring pages of `base`.
    fn page<'a, T>(&self, items: &'a [T], base: &str) -> (&'a [T], Markup) {
        let rows = self.rows();
        let pages = items.len().div_ceil(rows).max(1);
        let page = self.page.unwrap_or(1).min(pages);
        let shown = &items[(page - 1) * rows..(page * rows).min(items.len())];
        let link = |page: usize| {
            let mut pairs = vec![("page", page.to_string())];
            if !self.q.is_empty() {
                pairs.insert(0, ("q", self.q.clone()));
            }
            if let Some(n) = self.n {
                pairs.push(("n", n.to_string()));
            }
            format!(
                "{base}?{}",
                serde_urlencoded::to_string(pairs).unwrap_or_default()
            )
        };
        let first = (page - 1) * rows + 1;
        let nav = html! {
            p class="pages" {
                @if shown.is_empty() { "none" } @else {
                    (first) "-" (first + shown.len() - 1) " of " (items.len())
                }
                @if page > 1 { " " a rel="prev" href=(link(page - 1)) { "previous" } }
                @if page < pages { " " a rel="next" href=(link(page + 1)) { "next" } }
            }
        };
        (shown, nav)
    }

    /// The search form, sent to `action` with GET.
    fn form(&self, action: &str, what: &str) -> Markup {
        html! {
            form method="get" action=(action) {
                input type="search" name="q" value=(self.q) placeholder=(what) aria-label=(what);
                @if let Some(n) = self.n { input type="hidden" name="n" value=(n); }
                " " button type="submit" { "search" }
            }
        }
    }
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 2em;max-width:66em;\
color:#222}table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid \
#ddd;text-align:left}code{background:#f4f4f4;padding:0 .2em}h1 a{color:inherit}";

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " - vmt-hub" }
                style { (STYLE) }
            }
            body {
                h1 { a href="/" { "vmt-hub" } }
                (body)
            }
        }
    };
    (
        StatusCode::OK,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            (
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    let mut r = page(
        "not found",
        html! { p { (what) " is not in this registry." } },
    );
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn bad_request(what: &str) -> Box<Response> {
    let mut r = page(
        "bad request",
        html! { p { "This catalog cannot read " (what) "." } },
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    Box::new(r)
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("catalog: {e}");
    let mut r = page(
        "error",
        html! { p { "The registry could not answer; see the server's log." } },
    );
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// Answers a catalog path (`/` or below [`UI`]) with its query string.
pub(super) fn answer(
    st: &ServerState,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let rest = path.strip_prefix(UI).unwrap_or("");
    let list = || ListQuery::parse(query);
    let result = if path == "/" || rest.is_empty() {
        list().map_or_else(|e| Ok(*e), |q| repositories(st, &q))
    } else if let Some(name) = rest.strip_prefix("repo/") {
        list().map_or_else(|e| Ok(*e), |q| repository(st, name, &q))
    } else if let Some(reference) = rest.strip_prefix("bundle/") {
        bundle(st, reference, headers)
    } else {
        Ok(not_found(path))
    };
    result.unwrap_or_else(internal)
}

fn repositories(st: &ServerState, query: &ListQuery) -> crate::Result<Response> {
    let mut names: std::collections::BTreeMap<String, usize> = Default::default();
    for (tag, _) in st.reg.tag_list()? {
        if let Some((name, _)) = tag.rsplit_once(':') {
            *names.entry(name.to_string()).or_default() += 1;
        }
    }
    let any = !names.is_empty();
    let found: Vec<_> = names
        .into_iter()
        .filter(|(n, _)| query.matches(n))
        .collect();
    let (shown, nav) = query.page(&found, "/");
    Ok(page(
        "repositories",
        html! {
            h2 { "Repositories" }
            @if !any {
                p { "No bundle has been pushed yet." }
            } @else {
                (query.form("/", "repository name"))
                table {
                    tr { th { "repository" } th { "tags" } }
                    @for (name, count) in shown {
                        tr {
                            td { a href={ (UI) "repo/" (name) } { (name) } }
                            td { (count) }
                        }
                    }
                }
                (nav)
            }
        },
    ))
}

fn repository(st: &ServerState, name: &str, query: &ListQuery) -> crate::Result<Response> {
    let rows: Vec<_> = st
        .reg
        .list()?
        .into_iter()
        .filter(|e| e.tag.rsplit_once(':').is_some_and(|(n, _)| n == name))
        .collect();
    if rows.is_empty() {
        return Ok(not_found(&format!("repository {name}")));
    }
    let tag =
        |e: &crate::store::ListEntry| e.tag.rsplit_once(':').map_or("", |(_, t)| t).to_string();
    let found: Vec<_> = rows
        .into_iter()
        .filter(|e| query.matches(&tag(e)) || e.tasks.iter().any(|t| query.matches(t)))
        .collect();
    let base = format!("{UI}repo/{name}");
    let (shown, nav) = query.page(&found, &base);
    Ok(page(
        name,
        html! {
            h2 { "Repository " code { (name) } }
            (query.form(&base, "tag or task"))
            table {
                tr { th { "tag" } th { "digest" } th { "tasks" } th { "size" } }
                @for e in shown {
                    tr {
                        td { a href={ (UI) "bundle/" (e.tag) } { (tag(e)) } }
                        td { code { (e.digest.short()) } }
                        td { (e.tasks.join(", ")) }
                        td { (human_bytes(e.size)) }
                    }
                }
            }
            (nav)
        },
    ))
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// The host a browser reached the server at, if it looks like one (it is shown in the
/// pull command; escaped like everything else).
fn host(headers: &HeaderMap) -> String {
    headers
        .get("Host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .unwrap_or("HOST")
        .to_string()
}

fn bundle(st: &ServerState, reference: &str, headers: &HeaderMap) -> crate::Result<Response> {
    let Some((name, _)) = reference.rsplit_once(':') else {
        return Ok(not_found(reference));
    };
    let Some(d) = st.reg.tag_target(reference)? else {
        return Ok(not_found(&format!("bundle {reference}")));
    };
    let manifest = st.reg.manifest(&d)?;
    let config_bytes = st.reg.blob(&manifest.config.digest, "config")?;
    let config = crate::bundle::dir::parse_config(&config_bytes, std::path::Path::new("config"))?;
    let lineage = crate::compose::lineage(&st.reg, &d)?;
    let signatures = crate::sign::signatures(&st.reg, &d, Some(name)).unwrap_or_else(|e| {
        tracing::warn!("catalog: signatures of {reference}: {e}");
        Vec::new()
    });
    let pull = format!("vmt-hub pull oci://{}/{reference}", host(headers));
    Ok(page(
        reference,
        html! {
            h2 { "Bundle " code { (reference) } }
            p { "digest " code { (d) } }
            p { "Pull it: " code { (pull) } }
            (tasks_table(&manifest, &config))
            (provenance(&config))
            h3 { "Lineage (oldest first)" }
            ol {
                @for step in &lineage {
                    li {
                        code { (step.digest.short()) }
                        @if !step.tags.is_empty() { " (" (step.tags.join(", ")) ")" }
                        " " (step.operation)
                        @for t in &step.added { " +" (t) }
                        @for t in &step.removed { " -" (t) }
                    }
                }
            }
            h3 { "Signatures" }
            @if signatures.is_empty() {
                p { "none" }
            } @else {
                ul {
                    @for s in &signatures {
                        li { "cosign signature for " code { (s.docker_reference().unwrap_or_else(|| "?".into())) } }
                    }
                }
            }
        },
    ))
}

fn tasks_table(manifest: &Manifest, config: &BundleConfig) -> Markup {
    let per_component = component_params(config);
    let params = |component: &str| per_component.get(component).copied().unwrap_or(0);
    let metrics = config.metrics().unwrap_or_default();
    let g = &config.backbone;
    let total: usize = manifest
        .layers
        .iter()
        .map(|l| params(l.title().unwrap_or("")))
        .sum();
    html! {
        h3 { "Tasks" }
        table {
            tr { th { "task" } th { "kind" } th { "channels" } th { "validation" } th { "classes" } }
            @for t in &config.tasks {
                tr {
                    td { (t.name) }
                    td { (format!("{:?}", t.kind).to_lowercase()) }
                    td { (t.channels) }
                    td {
                        @if let Some(m) = metrics.val.get(&t.name) {
                            @for (k, v) in &m.metrics {
                                @let strong = *k == m.primary;
                                @if strong { b { (k) " " (format!("{v:.4}")) } } @else { (k) " " (format!("{v:.4}")) }
                                " "
                            }
                        }
                    }
                    td {
                        @if let Some(names) = &t.class_names {
                            (names.join(", "))
                        }
                    }
                }
            }
        }
        h3 { "Components" }
        table {
            tr { th { "component" } th { "bytes" } th { "parameters" } th { "digest" } }
            @for l in &manifest.layers {
                @let title = l.title().unwrap_or("?");
                tr {
                    td { (title) }
                    td { (human_bytes(l.size)) }
                    td { (params(title)) }
                    td { code { (l.digest.short()) } }
                }
            }
        }
        @if let Some(dm) = metrics.extra.get("delta_m").and_then(|v| v.as_f64()) {
            p { "Δm against single-task baselines: " b { (format!("{dm:+.2}")) } " %" }
        }
        p { "trainable parameters: " (total) }
        h3 { "Backbone and adapter" }
        ul {
            li { "backbone: " (g.source.as_deref().unwrap_or("<unknown source>")) " (" (g.describe()) ")" }
            @if let Some(rev) = &g.revision { li { "commit: " code { (rev) } } }
            @if let Some(digest) = &g.digest { li { "weights: " code { (digest) } } }
            li { "adapter: " (config.adapter.kind) ", reduction " (config.adapter.reduction) }
        }
    }
}

fn provenance(config: &BundleConfig) -> Markup {
    let Some(p) = config.provenance() else {
        return html! { h3 { "Provenance" } p { "not recorded" } };
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    html! {
        h3 { "Provenance" }
        ul {
            li { "code version: " (opt(p.code_version.clone())) }
            li { "data: " code { (opt(p.data_digest.clone())) } }
            li { "steps: " (opt(p.steps.map(|s| s.to_string()))) ", seed " (opt(p.seed.map(|s| s.to_string()))) }
            @if let Some(parent) = &p.parent { li { "parent: " code { (parent) } } }
            @if let Some(op) = &p.operation { li { "operation: " (op) } }
        }
    }
}
