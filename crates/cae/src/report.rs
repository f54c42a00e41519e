//! `report.html`: one self-contained page (images inlined as data URIs, no network access) that
//! shows run folders and sweep folders: configuration, per-epoch table, loss curves, every
//! epoch's reconstructions, and for sweeps the summary table and comparison figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::Value;

use crate::run_folder::{
    Csv, EPOCHS_COMPARE, EPOCHS_CSV, LOSSES_COMPARE, RECON_COMPARE, RunFolder, SUMMARY_FILE,
    SWEEP_FILE, folder_name,
};
use crate::viz::loss_plot::loss_plot_svg;

/// The comparison figures of a sweep in page order: file, caption, and whether it shows pixels
/// (drawn without smoothing when the browser scales it).
const SWEEP_FIGURES: [(&str, &str, bool); 3] = [
    (
        LOSSES_COMPARE,
        "Training (solid) and validation (dashed) loss of every run",
        false,
    ),
    (
        RECON_COMPARE,
        "The first test image of every class, then each run's reconstructions after the last epoch",
        true,
    ),
    (
        EPOCHS_COMPARE,
        "Each run's reconstructions after epoch 1 and after the last epoch",
        true,
    ),
];

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
            .filter(|run| run.join(EPOCHS_CSV).is_file())
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
    crate::io::atomic::write_bytes(out, html.as_bytes())
        .with_context(|| format!("cannot write the report {}", out.display()))
}

/// The report page on `dirs` (run or sweep folders).
pub(crate) fn render_report(dirs: &[PathBuf]) -> Result<String> {
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
        csv_table(b, &Csv::read(&run.dir.join(EPOCHS_CSV))?)?;
        writeln!(b, "<h4>Loss curves</h4>")?;
        let variational = run
            .config
            .as_ref()
            .is_some_and(|c| c["model"]["variational"] == true);
        let svg = loss_plot_svg(&run.history.loss_history(variational))
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
pub(crate) fn escape(text: &str) -> String {
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

/// Standard base64 (RFC 4648) with padding, as data URIs take it.
fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Up to `<title>`: the policy forbids every network request (only inline styles, scripts and
/// data: images), and the first script records errors for the render check at the end.
const HEAD_START: &str = include_str!("../assets/report/head_start.html");

const HEAD_END: &str = include_str!("../assets/report/head_end.html");

/// The slider logic, and the render check: once everything has loaded it lists the sections,
/// every image's decoded size (0 means broken) and every error into `#render-check`.
const PAGE_END: &str = include_str!("../assets/report/page_end.html");

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
