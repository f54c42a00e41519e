//! `report.html`: one self-contained page (images inlined as data URIs, no network access) that
//! shows run folders and sweep folders: configuration, per-epoch table, loss curves, every
//! epoch's reconstructions, and for sweeps the summary table and comparison figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::history::{EpochRecord, History};
use crate::viz::loss_plot::loss_plot_svg;

pub const REPORT_FILE: &str = "report.html";
/// Marks a sweep folder; written by `cae sweep`.
pub const SWEEP_FILE: &str = "sweep.json";
pub const SUMMARY_FILE: &str = "summary.csv";
/// The comparison figures of a sweep in page order: file, caption, and whether it shows pixels
/// (drawn without smoothing when the browser scales it).
pub const SWEEP_FIGURES: [(&str, &str, bool); 3] = [
    (
        "losses.png",
        "Training (solid) and validation (dashed) loss of every run",
        false,
    ),
    (
        "recon_compare.png",
        "The first test image of every class, then each run's reconstructions after the last epoch",
        true,
    ),
    (
        "epochs_compare.png",
        "Each run's reconstructions after epoch 1 and after the last epoch",
        true,
    ),
];

/// What a run folder holds, read back from its files.
#[derive(Debug, Clone)]
pub struct RunFolder {
    pub dir: PathBuf,
    /// `config.json`, if present.
    pub config: Option<Value>,
    /// From `epochs.csv` and `metrics.csv`.
    pub history: History,
    /// `(epoch, recon_epoch_NN.png)`, by epoch.
    pub recon_grids: Vec<(usize, PathBuf)>,
}

impl RunFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let epochs_csv = dir.join("epochs.csv");
        if !epochs_csv.is_file() {
            bail!(
                "{} is not a run folder: it has no epochs.csv (and no {SWEEP_FILE})",
                dir.display()
            );
        }
        let config = match std::fs::read(dir.join("config.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not valid JSON", dir.join("config.json").display())
            })?),
            Err(_) => None,
        };
        let epochs = read_epochs_csv(&epochs_csv)?;
        let metrics = dir.join("metrics.csv");
        let (train_batches, val_batches) = if metrics.is_file() {
            read_metrics_csv(&metrics)?
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            history: History {
                train_batches,
                val_batches,
                epochs,
            },
            recon_grids: recon_grids(dir)?,
        })
    }

    pub fn name(&self) -> String {
        folder_name(&self.dir)
    }

    pub fn last_epoch(&self) -> Option<&EpochRecord> {
        self.history.epochs.last()
    }
}

fn folder_name(dir: &Path) -> String {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A CSV file as a header and rows of cells (the files cae writes hold no quoted commas).
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let split = |line: &str| line.split(',').map(|c| c.trim().to_owned()).collect();
        let header = lines
            .next()
            .map(split)
            .with_context(|| format!("{} is empty", path.display()))?;
        Ok(Self {
            header,
            rows: lines.map(split).collect(),
        })
    }

    fn column(&self, name: &str, path: &Path) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no column {name}", path.display()))
    }
}

/// Reads `epochs.csv` by column name, so that added columns do not break it.
pub fn read_epochs_csv(path: &Path) -> Result<Vec<EpochRecord>> {
    let csv = Csv::read(path)?;
    let names = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_psnr",
        "seconds",
        "images_per_second",
    ];
    let columns = names
        .iter()
        .map(|name| csv.column(name, path))
        .collect::<Result<Vec<_>>>()?;
    csv.rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let number = |k: usize| -> Result<f64> {
                let cell = row.get(columns[k]).map_or("", String::as_str);
                cell.parse().with_context(|| {
                    format!(
                        "{} line {}: {} is `{cell}`, not a number",
                        path.display(),
                        i + 2,
                        names[k]
                    )
                })
            };
            Ok(EpochRecord {
                epoch: number(0)? as usize,
                train_loss: number(1)?,
                val_loss: number(2)?,
                val_psnr: number(3)?,
                seconds: number(4)?,
                images_per_second: number(5)?,
            })
        })
        .collect()
}

type BatchLosses = Vec<Vec<f64>>;

/// Reads `metrics.csv` back into per-epoch batch losses for training and validation.
fn read_metrics_csv(path: &Path) -> Result<(BatchLosses, BatchLosses)> {
    let csv = Csv::read(path)?;
    let [epoch, split, loss] = ["epoch", "split", "loss"].map(|n| csv.column(n, path));
    let (epoch, split, loss) = (epoch?, split?, loss?);
    let mut train = BatchLosses::new();
    let mut val = BatchLosses::new();
    for (i, row) in csv.rows.iter().enumerate() {
        let bad = || format!("{} line {} is malformed", path.display(), i + 2);
        let e: usize = row
            .get(epoch)
            .with_context(bad)?
            .parse()
            .with_context(bad)?;
        let l: f64 = row.get(loss).with_context(bad)?.parse().with_context(bad)?;
        let target = match row.get(split).map(String::as_str) {
            Some("train") => &mut train,
            Some("val") => &mut val,
            _ => bail!(bad()),
        };
        if e == 0 {
            bail!(bad());
        }
        if target.len() < e {
            target.resize(e, Vec::new());
        }
        target[e - 1].push(l);
    }
    Ok((train, val))
}

/// `recon_epoch_NN.png` files of a run folder, by epoch.
pub fn recon_grids(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut grids: Vec<(usize, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let epoch = name
                .strip_prefix("recon_epoch_")?
                .strip_suffix(".png")?
                .parse()
                .ok()?;
            Some((epoch, path))
        })
        .collect();
    grids.sort();
    Ok(grids)
}

/// What `cae report` was pointed at.
enum Folder {
    Run(RunFolder),
    Sweep {
        dir: PathBuf,
        spec: Value,
        runs: Vec<RunFolder>,
    },
}

impl Folder {
    fn open(dir: &Path) -> Result<Self> {
        let spec_path = dir.join(SWEEP_FILE);
        if !spec_path.is_file() {
            return RunFolder::open(dir).map(Folder::Run);
        }
        let spec: Value = serde_json::from_slice(
            &std::fs::read(&spec_path)
                .with_context(|| format!("cannot read {}", spec_path.display()))?,
        )
        .with_context(|| format!("{} is not valid JSON", spec_path.display()))?;
        // Runs that have not finished an epoch yet have nothing to show.
        let runs = sweep_run_names(&spec)
            .iter()
            .map(|name| dir.join(name))
            .filter(|run| run.join("epochs.csv").is_file())
            .map(|run| RunFolder::open(&run))
            .collect::<Result<_>>()?;
        Ok(Folder::Sweep {
            dir: dir.to_path_buf(),
            spec,
            runs,
        })
    }
}

/// The run folder names listed in `sweep.json`, in sweep order.
fn sweep_run_names(spec: &Value) -> Vec<String> {
    spec["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the report on `dirs` (run or sweep folders) to `out`.
pub fn write_report(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let html = render_report(dirs)?;
    crate::atomic::write_bytes(out, html.as_bytes())
        .with_context(|| format!("cannot write the report {}", out.display()))
}

/// The report page on `dirs` (run or sweep folders).
pub fn render_report(dirs: &[PathBuf]) -> Result<String> {
    if dirs.is_empty() {
        bail!("name at least one run or sweep folder");
    }
    let mut page = Page::default();
    for dir in dirs {
        match Folder::open(dir)? {
            Folder::Run(run) => page.run_section(&run, false)?,
            Folder::Sweep { dir, spec, runs } => page.sweep_section(&dir, &spec, &runs)?,
        }
    }
    let title = dirs
        .iter()
        .map(|d| folder_name(d))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(page.finish(&title))
}

/// The body of the page under construction, and the section ids used so far.
#[derive(Default)]
struct Page {
    body: String,
    ids: Vec<String>,
}

impl Page {
    /// A unique `id` attribute value for a section about `kind` `name`.
    fn section_id(&mut self, kind: &str, name: &str) -> String {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let base = format!("{kind}-{slug}");
        let mut id = base.clone();
        let mut n = 1;
        while self.ids.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        self.ids.push(id.clone());
        id
    }

    fn sweep_section(&mut self, dir: &Path, spec: &Value, runs: &[RunFolder]) -> Result<()> {
        let name = folder_name(dir);
        let id = self.section_id("sweep", &name);
        let b = &mut self.body;
        writeln!(b, "<section id=\"{id}\" class=\"sweep\">")?;
        writeln!(b, "<h2>Sweep {}</h2>", escape(&name))?;
        writeln!(
            b,
            "<p class=\"path\">{}</p>",
            escape(&dir.display().to_string())
        )?;
        writeln!(b, "<h3>Summary</h3>")?;
        match Csv::read(&dir.join(SUMMARY_FILE)) {
            Ok(csv) => csv_table(b, &csv)?,
            Err(_) => writeln!(
                b,
                "<p>No {SUMMARY_FILE} yet: the sweep has not finished.</p>"
            )?,
        }
        for (file, caption, pixels) in SWEEP_FIGURES {
            let path = dir.join(file);
            if path.is_file() {
                figure(b, &path, caption, pixels)?;
            }
        }
        writeln!(b, "<h3>Sweep configuration</h3>")?;
        let mut settings = spec.clone();
        if let Some(map) = settings.as_object_mut() {
            map.remove("runs");
        }
        key_value_table(b, &settings)?;
        for run in runs {
            self.run_section(run, true)?;
        }
        self.body.push_str("</section>\n");
        Ok(())
    }

    /// A run's section; inside a sweep it is a collapsed `<details>` block.
    fn run_section(&mut self, run: &RunFolder, in_sweep: bool) -> Result<()> {
        let name = run.name();
        let id = self.section_id("run", &name);
        let b = &mut self.body;
        if in_sweep {
            writeln!(b, "<section id=\"{id}\" class=\"run\"><details>")?;
            writeln!(b, "<summary><h3>Run {}</h3></summary>", escape(&name))?;
        } else {
            writeln!(b, "<section id=\"{id}\" class=\"run\">")?;
            writeln!(b, "<h2>Run {}</h2>", escape(&name))?;
        }
        writeln!(
            b,
            "<p class=\"path\">{}</p>",
            escape(&run.dir.display().to_string())
        )?;
        writeln!(b, "<h4>Configuration</h4>")?;
        match &run.config {
            Some(config) => key_value_table(b, config)?,
            None => writeln!(b, "<p>No config.json.</p>")?,
        }
        writeln!(b, "<h4>Epochs</h4>")?;
        csv_table(b, &Csv::read(&run.dir.join("epochs.csv"))?)?;
        writeln!(b, "<h4>Loss curves</h4>")?;
        let svg = loss_plot_svg(&run.history.loss_history())
            .with_context(|| format!("cannot draw the loss curves of {}", run.dir.display()))?;
        writeln!(
            b,
            "<div class=\"plot\">{}</div>",
            strip_xml_declaration(&svg)
        )?;
        writeln!(b, "<h4>Reconstructions</h4>")?;
        epoch_viewer(b, &run.recon_grids)?;
        b.push_str(if in_sweep {
            "</details></section>\n"
        } else {
            "</section>\n"
        });
        Ok(())
    }

    fn finish(self, title: &str) -> String {
        let mut page = String::new();
        page.push_str(HEAD_START);
        let _ = writeln!(page, "<title>cae report: {}</title>", escape(title));
        page.push_str(HEAD_END);
        let _ = writeln!(page, "<h1>cae report: {}</h1>", escape(title));
        let _ = writeln!(
            page,
            "<p class=\"path\">Written {} by cae {}.</p>",
            chrono::Local::now().format("%Y-%m-%d %H:%M"),
            env!("CARGO_PKG_VERSION")
        );
        page.push_str(&self.body);
        page.push_str(PAGE_END);
        page
    }
}

/// Every epoch's reconstruction grid, one at a time under a slider (the last epoch first).
fn epoch_viewer(b: &mut String, grids: &[(usize, PathBuf)]) -> Result<()> {
    let Some((last_epoch, _)) = grids.last() else {
        writeln!(b, "<p>No reconstruction grids.</p>")?;
        return Ok(());
    };
    let last = grids.len() - 1;
    writeln!(b, "<div class=\"epoch-viewer\">")?;
    writeln!(
        b,
        "<label>Epoch <input type=\"range\" min=\"0\" max=\"{last}\" value=\"{last}\" step=\"1\"> \
         <span class=\"epoch-label\">{last_epoch}</span></label>"
    )?;
    for (i, (epoch, path)) in grids.iter().enumerate() {
        let hidden = if i == last { "" } else { " hidden" };
        writeln!(
            b,
            "<img src=\"{}\" alt=\"reconstructions after epoch {epoch}\" data-epoch=\"{epoch}\"{hidden}>",
            png_data_uri(path)?
        )?;
    }
    writeln!(
        b,
        "<p class=\"caption\">Top row: the first test image of every class; bottom row: its reconstruction.</p></div>"
    )?;
    Ok(())
}

fn figure(b: &mut String, path: &Path, caption: &str, pixels: bool) -> Result<()> {
    let class = if pixels { " class=\"pixels\"" } else { "" };
    writeln!(
        b,
        "<figure><img{class} src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
        png_data_uri(path)?,
        escape(&folder_name(path)),
        escape(caption)
    )?;
    Ok(())
}

fn png_data_uri(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("data:image/png;base64,{}", base64(&bytes)))
}

/// A JSON object flattened into `a.b.c | value` rows.
fn key_value_table(b: &mut String, value: &Value) -> Result<()> {
    let mut rows = Vec::new();
    flatten_json("", value, &mut rows);
    // The training settings matter most; the rest keeps its order.
    rows.sort_by_key(|(key, _)| !key.starts_with("settings."));
    writeln!(b, "<table class=\"config\"><tbody>")?;
    for (key, value) in rows {
        writeln!(
            b,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        )?;
    }
    writeln!(b, "</tbody></table>")?;
    Ok(())
}

fn flatten_json(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_json(&path, child, rows);
            }
        }
        Value::String(s) => rows.push((prefix.to_owned(), s.clone())),
        Value::Null => rows.push((prefix.to_owned(), "none".to_owned())),
        other => rows.push((prefix.to_owned(), other.to_string())),
    }
}

fn csv_table(b: &mut String, csv: &Csv) -> Result<()> {
    writeln!(b, "<table class=\"numbers\"><thead><tr>")?;
    for h in &csv.header {
        write!(b, "<th>{}</th>", escape(h))?;
    }
    writeln!(b, "</tr></thead><tbody>")?;
    for row in &csv.rows {
        b.push_str("<tr>");
        for cell in row {
            write!(b, "<td>{}</td>", escape(&short_number(cell)))?;
        }
        b.push_str("</tr>\n");
    }
    writeln!(b, "</tbody></table>")?;
    Ok(())
}

/// Decimal numbers with more than six decimals are rounded to six; anything else stays.
fn short_number(cell: &str) -> String {
    let decimals = cell.split_once('.').map_or(0, |(_, d)| d.len());
    match cell.parse::<f64>() {
        Ok(v) if decimals > 6 && !cell.contains(['e', 'E']) => format!("{v:.6}"),
        _ => cell.to_owned(),
    }
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (RFC 4648) with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Up to `<title>`: the policy forbids every network request (only inline styles, scripts and
/// data: images), and the first script records errors for the render check at the end.
const HEAD_START: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<script>
window.caeErrors = [];
window.addEventListener('error', function (e) {
  var target = e.target && e.target !== window ? e.target : null;
  window.caeErrors.push(target ? 'cannot load ' + target.tagName + ' ' + (target.alt || '') : String(e.message));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.caeErrors.push('blocked by the page policy: ' + e.blockedURI + ' (' + e.violatedDirective + ')');
});
(function () {
  var original = console.error;
  console.error = function () {
    window.caeErrors.push(Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
})();
</script>
"#;

const HEAD_END: &str = r#"<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h4 { margin-bottom: .4em; }
summary h3 { display: inline; cursor: pointer; }
details { margin: 1em 0; padding: .5em 1em; border: 1px solid #ddd; border-radius: 4px; }
.path { color: #666; font-size: .9em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.config th { text-align: left; background: #f5f5f5; font-weight: normal; }
thead th { background: #eee; }
img, .plot svg { max-width: 100%; height: auto; display: block; }
.epoch-viewer img, img.pixels { image-rendering: pixelated; }
img[hidden] { display: none; }
figure { margin: 1em 0; } figcaption, .caption { color: #555; font-size: .9em; }
.epoch-viewer input { width: 20em; vertical-align: middle; }
</style>
</head>
<body>
"#;

/// The slider logic, and the render check: once everything has loaded it lists the sections,
/// every image's decoded size (0 means broken) and every error into `#render-check`.
const PAGE_END: &str = r#"<pre id="render-check" hidden></pre>
<script>
document.querySelectorAll('.epoch-viewer').forEach(function (viewer) {
  var slider = viewer.querySelector('input[type=range]');
  var label = viewer.querySelector('.epoch-label');
  var images = viewer.querySelectorAll('img');
  function show() {
    images.forEach(function (img, i) { img.hidden = String(i) !== slider.value; });
    label.textContent = images[Number(slider.value)].dataset.epoch;
  }
  slider.addEventListener('input', show);
  show();
});
window.addEventListener('load', function () {
  var check = {
    sections: Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; }),
    images: Array.prototype.map.call(document.images, function (img) {
      return { alt: img.alt, width: img.naturalWidth, height: img.naturalHeight };
    }),
    svgs: document.querySelectorAll('svg').length,
    errors: window.caeErrors
  };
  document.getElementById('render-check').textContent = JSON.stringify(check);
});
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
    }

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn long_decimals_are_shortened_only() {
        assert_eq!(short_number("0.08170197749762889"), "0.081702");
        assert_eq!(short_number("18.6312"), "18.6312");
        assert_eq!(short_number("latent-200"), "latent-200");
        assert_eq!(short_number("1e-8"), "1e-8");
    }
}
