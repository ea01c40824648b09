//! `serve`'s catalog in a real headless browser (Debian's `chromium`): the
//! repositories are listed, a bundle page shows the tasks, metrics and lineage `show`
//! prints, and a bundle whose provenance carries `<script>` and `"><img onerror=...>`
//! renders them as text (no element is made of them, the page's DOM is checked). With
//! `--token` the pages ask for it like the API does.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ok, spawn_serve, KillOnDrop};

const SCRIPT: &str = "<script>document.body.setAttribute('data-pwned','1')</script>";
const IMG: &str = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">";

/// Debian's chromium, if installed (see `common::tool_available`).
fn chromium() -> Option<&'static str> {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    common::tool_available("chromium", bin.is_some(), "apt-get install -y chromium")
        .then(|| bin.expect("checked"))
}

/// Chromium, headless, on `url`, with `what` (`--dump-dom`, `--screenshot=...`).
fn browse(bin: &str, url: &str, what: &[&str], profile: &Path) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(what)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry with a trained bundle (metrics, provenance), one derived from it
/// (lineage) and a hostile one whose provenance strings are markup.
fn registry(tmp: &Path) -> std::path::PathBuf {
    let root = tmp.join("served");
    let data = tmp.join("data");
    ok(
        &root,
        &[
            "data",
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "8",
            "--size",
            "32",
        ],
    );
    ok(
        &root,
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--tasks",
            "semseg,sal",
            "--backbone",
            "random:tiny",
            "--steps",
            "2",
            "--batch",
            "2",
            "--image-size",
            "32",
            "--run-dir",
            tmp.join("run").to_str().unwrap(),
            "--tag",
            "team/seg:v1",
        ],
    );
    ok(
        &root,
        &[
            "drop-task",
            "team/seg:v1",
            "--task",
            "sal",
            "--tag",
            "team/seg:v2",
        ],
    );
    let dir = tmp.join("evil");
    ok(&root, &["export", "team/seg:v1", dir.to_str().unwrap()]);
    let path = dir.join("bundle.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["provenance"]["code_version"] = SCRIPT.into();
    config["provenance"]["data_digest"] = IMG.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    ok(
        &root,
        &["import", dir.to_str().unwrap(), "--tag", "evil/x:v1"],
    );
    root
}

#[test]
fn the_catalog_shows_what_show_prints_and_renders_hostile_strings_as_text() {
    let Some(bin) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = registry(tmp.path());
    let (child, port) = spawn_serve(&root, &[]);
    let _serve = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let profile = tmp.path().join("profile");

    let home = browse(bin, &format!("{base}/"), &["--dump-dom"], &profile);
    for repo in ["team/seg", "evil/x"] {
        assert!(
            home.contains(&format!("href=\"/ui/repo/{repo}\"")),
            "{home}"
        );
    }
    let repo = browse(
        bin,
        &format!("{base}/ui/repo/team/seg"),
        &["--dump-dom"],
        &profile,
    );
    assert!(
        repo.contains("/ui/bundle/team/seg:v1") && repo.contains("/ui/bundle/team/seg:v2"),
        "{repo}"
    );

    // The bundle page against `show`: tasks, every validation metric, the lineage.
    let page = browse(
        bin,
        &format!("{base}/ui/bundle/team/seg:v2"),
        &["--dump-dom"],
        &profile,
    );
    let show = ok(&root, &["show", "team/seg:v2"]);
    let config: serde_json::Value =
        serde_json::from_str(&show[show.find("config:\n").unwrap() + 8..]).unwrap();
    for task in config["tasks"].as_array().unwrap() {
        let name = task["name"].as_str().unwrap();
        assert!(page.contains(&format!("<td>{name}</td>")), "{name}: {page}");
        for (metric, v) in config["metrics"]["val"][name]["metrics"]
            .as_object()
            .unwrap()
        {
            let shown = format!("{metric} {:.4}", v.as_f64().unwrap());
            assert!(page.contains(&shown), "{shown}: {page}");
        }
    }
    assert!(!page.contains("<td>sal</td>"), "v2 dropped sal");
    assert!(
        page.contains("background, disc, box, triangle, figure"),
        "class names: {page}"
    );
    let digests: Vec<&str> = show
        .lines()
        .skip_while(|l| !l.starts_with("lineage"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(digests.len(), 2, "{show}");
    for d in digests {
        let short = &d["sha256:".len().."sha256:".len() + 12];
        assert!(page.contains(short), "lineage {short}: {page}");
    }
    assert!(
        page.contains("drop-task") && page.contains("-sal"),
        "{page}"
    );
    assert!(
        page.contains(&format!("vmt-hub pull oci://127.0.0.1:{port}/team/seg:v2")),
        "{page}"
    );

    // The hostile bundle: its strings are text, no element or attribute came of them.
    let evil = browse(
        bin,
        &format!("{base}/ui/bundle/evil/x:v1"),
        &["--dump-dom"],
        &profile,
    );
    assert!(
        evil.contains("&lt;script&gt;document.body.setAttribute"),
        "{evil}"
    );
    assert!(evil.contains("\"&gt;&lt;img src=x onerror="), "{evil}");
    assert!(!evil.contains("<body data-pwned"), "a script ran: {evil}");
    assert!(!evil.contains("<img"), "an element was made: {evil}");
    assert_eq!(evil.matches("<script").count(), 0, "{evil}");

    // A screenshot renders (docs/img/catalog.png is one, made by scripts/catalog-screenshot.sh).
    let shot = tmp.path().join("page.png");
    browse(
        bin,
        &format!("{base}/ui/bundle/team/seg:v2"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,900",
        ],
        &profile,
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn with_a_token_the_catalog_asks_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    ok(
        &root,
        &[
            "import",
            common::fixtures().join("tiny/bundle").to_str().unwrap(),
            "--tag",
            "team/seg:v1",
        ],
    );
    let (child, port) = spawn_serve(&root, &["--token", "s3cret"]);
    let _serve = KillOnDrop(child);
    let url = format!("http://127.0.0.1:{port}/ui/bundle/team/seg:v1");
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, r)) => {
            assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic"));
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let auth = format!("Basic {}", base64_encode(b"me:s3cret"));
    let r = ureq::get(&url).set("Authorization", &auth).call().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .header("Content-Security-Policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(r.into_string().unwrap().contains("team/seg:v1"));
}

/// `GET url`: the status and the body.
fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The `href` of the link with `rel`, as a browser reads it (`&amp;` is `&`).
fn link(html: &str, rel: &str) -> Option<String> {
    let start = format!("rel=\"{rel}\" href=\"");
    let at = html.find(&start)? + start.len();
    Some(html[at..at + html[at..].find('"')?].replace("&amp;", "&"))
}

#[test]
fn the_catalog_searches_and_pages_its_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("served");
    let tiny = common::fixtures().join("tiny/bundle");
    ok(
        &root,
        &["import", tiny.to_str().unwrap(), "--tag", "team/seg:v1"],
    );
    for tag in ["team/seg:v2", "team/seg:rc3", "other/depth:v1"] {
        ok(&root, &["tag", "team/seg:v1", tag]);
    }
    let (child, port) = spawn_serve(&root, &[]);
    let _serve = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");

    // Repositories by name, ignoring case; the search form keeps the search.
    let (code, home) = get(&format!("{base}/?q=SEG"));
    assert_eq!(code, 200);
    assert!(home.contains("href=\"/ui/repo/team/seg\""), "{home}");
    assert!(!home.contains("other/depth"), "{home}");
    assert!(home.contains("<form method=\"get\" action=\"/\">") && home.contains("value=\"SEG\""));
    assert!(home.contains("1-1 of 1"), "{home}");

    // Tags in pages of two: the next link leads to the last page, which links back.
    let (_, first) = get(&format!("{base}/ui/repo/team/seg?n=2"));
    assert_eq!(
        first.matches("<a href=\"/ui/bundle/team/seg:").count(),
        2,
        "{first}"
    );
    assert!(
        first.contains("1-2 of 3") && link(&first, "prev").is_none(),
        "{first}"
    );
    let next = link(&first, "next").expect("a next page");
    assert_eq!(next, "/ui/repo/team/seg?page=2&n=2");
    let (_, last) = get(&format!("{base}{next}"));
    assert_eq!(
        last.matches("<a href=\"/ui/bundle/team/seg:").count(),
        1,
        "{last}"
    );
    assert!(
        last.contains("3-3 of 3") && link(&last, "next").is_none(),
        "{last}"
    );
    assert_eq!(link(&last, "prev").unwrap(), "/ui/repo/team/seg?page=1&n=2");
    let shown = |html: &str| {
        ["v1", "v2", "rc3"]
            .into_iter()
            .filter(|t| html.contains(&format!("/ui/bundle/team/seg:{t}\"")))
            .count()
    };
    assert_eq!(
        shown(&first) + shown(&last),
        3,
        "every tag on one of the pages"
    );

    // Tags by tag name or by task name; the search travels with the page links.
    let (_, rc) = get(&format!("{base}/ui/repo/team/seg?q=RC"));
    assert_eq!(shown(&rc), 1, "{rc}");
    assert!(rc.contains("seg:rc3"), "{rc}");
    let (_, by_task) = get(&format!("{base}/ui/repo/team/seg?q=normals&n=1"));
    assert_eq!(shown(&by_task), 1, "{by_task}");
    assert_eq!(
        link(&by_task, "next").unwrap(),
        "/ui/repo/team/seg?q=normals&page=2&n=1"
    );
    let (_, none) = get(&format!("{base}/ui/repo/team/seg?q=depth"));
    assert_eq!(shown(&none), 0, "{none}");

    // A page past the last shows the last; a bad query is a 400 that says why.
    let (_, past) = get(&format!("{base}/ui/repo/team/seg?n=2&page=9"));
    assert!(past.contains("3-3 of 3"), "{past}");
    let long = "x".repeat(300);
    for (query, why) in [
        ("n=0", "n must be 1 to 1000"),
        ("n=1001", "n must be 1 to 1000"),
        ("page=0", "pages count from 1"),
        ("page=two", "the query"),
        ("sort=name", "the query"),
        (&format!("q={long}") as &str, "more than 256 bytes"),
    ] {
        let (code, body) = get(&format!("{base}/ui/repo/team/seg?{query}"));
        assert_eq!(code, 400, "{query}");
        assert!(body.contains(why), "{query}: {body}");
    }

    // A hostile search is text in the form, in the raw page and in a real browser.
    let q = "%22%3E%3Cscript%3Edocument.body.setAttribute(%27data-pwned%27,%271%27)%3C/script%3E";
    let (_, raw) = get(&format!("{base}/?q={q}"));
    assert!(
        raw.contains("value=\"&quot;&gt;&lt;script&gt;document"),
        "{raw}"
    );
    assert_eq!(raw.matches("<script").count(), 0, "{raw}");
    let Some(bin) = chromium() else { return };
    let dom = browse(
        bin,
        &format!("{base}/?q={q}"),
        &["--dump-dom"],
        &tmp.path().join("profile"),
    );
    assert!(dom.contains("name=\"q\""), "{dom}");
    assert!(!dom.contains("data-pwned=\"1\""), "a script ran: {dom}");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
