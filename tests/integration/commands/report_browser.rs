//! `report.html` in a real browser: headless Chromium (Debian's `chromium`) loads the page, its
//! render check lists every section, every image's decoded size and every error, and a
//! screenshot shows that something was drawn.

use crate::common::{self, cae};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cae::viz::grid::save_recon_grid;
use serde_json::Value;

const CHROMIUM_CANDIDATES: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];

fn chromium() -> PathBuf {
    let from_env = std::env::var_os("CAE_CHROMIUM").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(CHROMIUM_CANDIDATES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium is needed to check report.html in a browser: \
                 apt-get install chromium (or set CAE_CHROMIUM to its binary)"
            )
        })
}

/// Runs headless Chromium on `page` with a fresh profile; `action` is `--dump-dom` or
/// `--screenshot=...`. Returns its output; fails the test when it does not exit cleanly.
fn run_chromium(page: &Path, action: &str) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", std::path::absolute(page).unwrap().display());
    let output = Command::new("timeout")
        .arg("120")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .output()
        .expect("chromium starts");
    assert!(
        output.status.success(),
        "chromium {action} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// What the page's render check saw once everything had loaded, plus the console messages
/// Chromium logged (the report logs none).
struct Rendered {
    check: Value,
    console: Vec<String>,
}

impl Rendered {
    fn images(&self) -> &Vec<Value> {
        self.check["images"].as_array().expect("images list")
    }

    fn sections(&self) -> Vec<&str> {
        let sections = self.check["sections"].as_array().expect("sections list");
        sections.iter().map(|s| s.as_str().unwrap()).collect()
    }

    fn errors(&self) -> &Vec<Value> {
        self.check["errors"].as_array().expect("errors list")
    }

    /// No broken image, no error, no console message.
    fn assert_clean(&self) {
        let broken: Vec<&Value> = self
            .images()
            .iter()
            .filter(|img| img["width"].as_u64() == Some(0))
            .collect();
        assert!(broken.is_empty(), "broken images: {broken:?}");
        assert!(self.errors().is_empty(), "page errors: {:?}", self.errors());
        assert!(self.console.is_empty(), "console: {:?}", self.console);
    }
}

fn render(page: &Path) -> Rendered {
    let output = run_chromium(page, "--dump-dom");
    let dom = String::from_utf8(output.stdout).unwrap();
    let start = dom
        .find("<pre id=\"render-check\"")
        .unwrap_or_else(|| panic!("no render-check element in the DOM:\n{dom:.2000}"));
    let text_start = start + dom[start..].find('>').unwrap() + 1;
    let text_end = text_start + dom[text_start..].find("</pre>").unwrap();
    let text = dom[text_start..text_end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    assert!(
        !text.trim().is_empty(),
        "the page's render check did not run (a script error before load?)"
    );
    let console = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Rendered {
        check: serde_json::from_str(&text).unwrap(),
        console,
    }
}

/// Takes a 1200x3000 screenshot of `page` into `png` and checks that it is not blank.
fn screenshot(page: &Path, png: &Path) {
    run_chromium(page, &format!("--screenshot={}", png.display()));
    let shot = image::open(png)
        .unwrap_or_else(|e| panic!("the screenshot {} does not decode: {e}", png.display()))
        .to_rgb8();
    assert_eq!((shot.width(), shot.height()), (1200, 3000));
    let mut colors: Vec<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    colors.sort_unstable();
    colors.dedup();
    assert!(
        colors.len() > 1000,
        "the screenshot looks blank: only {} colours",
        colors.len()
    );
}

/// A run folder as `cae train` leaves it after `epochs` epochs, with made-up numbers and
/// pictures (no training).
fn fake_run(dir: &Path, epochs: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "settings": {"latent": 200, "channels": 16, "epochs": epochs, "lr": 0.001},
        "model": {"latent": 200, "in_channels": 3, "height": 32, "width": 32},
        "params": 1786795
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // The CSV files as the run folder's schema spells them (crates/cae/src/run_folder).
    let mut epochs_csv =
        String::from("epoch,train_loss,val_loss,val_psnr,seconds,images_per_second\n");
    let (mut train_rows, mut val_rows) = (String::new(), String::new());
    for epoch in 1..=epochs {
        let loss = 0.1 / epoch as f64;
        for b in 0..8 {
            let batch_loss = loss * (1.2 - b as f64 * 0.05);
            train_rows += &format!("{epoch},{},train,{batch_loss}\n", b + 1);
        }
        val_rows += &format!("{epoch},1,val,{}\n", loss * 1.1);
        epochs_csv += &format!(
            "{epoch},{loss},{},{:.4},12.50,4000.0\n",
            loss * 1.1,
            20.0 + epoch as f64
        );
        let originals: Vec<Vec<f32>> = (0..10).map(|i| pattern(i, 0.0)).collect();
        let recons: Vec<Vec<f32>> = (0..10).map(|i| pattern(i, 1.0 / epoch as f32)).collect();
        save_recon_grid(
            &dir.join(format!("recon_epoch_{epoch:02}.png")),
            &originals,
            &recons,
            3,
            32,
            32,
        )
        .unwrap();
    }
    std::fs::write(dir.join("epochs.csv"), epochs_csv).unwrap();
    let metrics_csv = format!("epoch,batch,split,loss\n{train_rows}{val_rows}");
    std::fs::write(dir.join("metrics.csv"), metrics_csv).unwrap();
}

/// A colourful 3x32x32 image in [-1, 1]; `blur` in [0, 1] flattens it towards gray.
fn pattern(index: usize, blur: f32) -> Vec<f32> {
    (0..3 * 32 * 32)
        .map(|i| {
            let (c, y, x) = (i / 1024, (i / 32) % 32, i % 32);
            let v = ((x as f32 * 0.3 + index as f32).sin() * (y as f32 * 0.2 + c as f32).cos())
                .clamp(-1.0, 1.0);
            v * (1.0 - 0.8 * blur)
        })
        .collect()
}

#[test]
fn run_report_renders_every_section_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("my run");
    fake_run(&run, 3);
    cae(&["report", run.to_str().unwrap()]);
    let page = run.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for section in ["Configuration", "Epochs", "Loss curves", "Reconstructions"] {
        assert!(html.contains(&format!("<h4>{section}</h4>")), "{section}");
    }
    assert!(html.contains("<input type=\"range\""), "epoch slider");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    let rendered = render(&page);
    rendered.assert_clean();
    assert_eq!(rendered.sections(), ["run-my-run"]);
    let images = rendered.images();
    assert_eq!(images.len(), 3, "one grid per epoch: {images:?}");
    for (epoch, image) in images.iter().enumerate() {
        assert_eq!(
            image["alt"],
            format!("reconstructions after epoch {}", epoch + 1)
        );
        // Ten 32-pixel cells with 1-pixel padding, two rows, enlarged 4x.
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(1324), Some(268))
        );
    }
    assert_eq!(rendered.check["svgs"], 1, "the loss curves");

    let shot = dir.path().join("run.png");
    screenshot(&page, &shot);
}

#[test]
fn broken_images_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    fake_run(&run, 2);
    std::fs::write(run.join("recon_epoch_02.png"), b"\x89PNG but not really").unwrap();
    let page = dir.path().join("broken.html");
    cae(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        page.to_str().unwrap(),
    ]);

    let rendered = render(&page);
    let widths: Vec<u64> = rendered
        .images()
        .iter()
        .map(|i| i["width"].as_u64().unwrap())
        .collect();
    assert_eq!(widths, [1324, 0]);
    assert!(!rendered.errors().is_empty(), "the failed load is recorded");
}

#[test]
fn sweep_report_renders_the_comparison_and_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep");
    let data = common::cifar_jpg_dir();
    let stdout = cae(&[
        "sweep",
        "--dataset",
        "folder",
        "--data-dir",
        data.to_str().unwrap(),
        "--latent",
        "8,16",
        "--epochs",
        "2",
        "--train-limit",
        "128",
        "--val-limit",
        "64",
        "--out",
        sweep.to_str().unwrap(),
    ]);
    let page = sweep.join("report.html");
    assert!(stdout.contains("report: "), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    for heading in [
        "<h3>Summary</h3>",
        "<h3>Sweep configuration</h3>",
        "Run latent-8",
        "Run latent-16",
    ] {
        assert!(html.contains(heading), "{heading}");
    }

    let rendered = render(&page);
    rendered.assert_clean();
    assert_eq!(
        rendered.sections(),
        ["sweep-sweep", "run-latent-8", "run-latent-16"]
    );
    let alts: Vec<&str> = rendered
        .images()
        .iter()
        .map(|i| i["alt"].as_str().unwrap())
        .collect();
    assert_eq!(
        alts,
        [
            "losses.png",
            "recon_compare.png",
            "epochs_compare.png",
            "reconstructions after epoch 1",
            "reconstructions after epoch 2",
            "reconstructions after epoch 1",
            "reconstructions after epoch 2",
        ]
    );
    assert_eq!(rendered.check["svgs"], 2, "one loss plot per run");

    // Kept in Cargo's scratch folder for a person to look at.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_sweep.png");
    screenshot(&page, &shot);
}

#[test]
fn train_writes_its_report_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::cifar_jpg_dir();
    let train = |out: &Path, extra: &[&str]| {
        let folder = ["--dataset", "folder", "--data-dir", data.to_str().unwrap()];
        common::train_quick(out, &[&folder[..], extra].concat())
    };
    let run = dir.path().join("run");
    let stdout = train(&run, &[]);
    assert!(stdout.contains("report: "), "{stdout}");
    let rendered = render(&run.join("report.html"));
    rendered.assert_clean();
    assert_eq!(rendered.sections(), ["run-run"]);
    assert_eq!(rendered.images().len(), 1);
    assert_eq!(rendered.check["svgs"], 1);

    let quiet = dir.path().join("quiet");
    train(&quiet, &["--no-report"]);
    assert!(quiet.join("model.safetensors").is_file());
    assert!(!quiet.join("report.html").exists());
}

#[test]
fn several_folders_share_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a/run"), dir.path().join("b/run"));
    fake_run(&a, 1);
    fake_run(&b, 2);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let output = common::cae_output(&["report", a, b]);
    assert!(!output.status.success(), "several folders need --out");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--out"));

    let page = dir.path().join("both.html");
    cae(&["report", a, b, "--out", page.to_str().unwrap()]);
    let rendered = render(&page);
    rendered.assert_clean();
    assert_eq!(rendered.sections(), ["run-run", "run-run-2"]);
    assert_eq!(rendered.images().len(), 3);
}

#[test]
fn a_folder_without_a_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::cae_output(&["report", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a run folder"), "{stderr}");
    assert!(!dir.path().join("report.html").exists());
}
