//! `cae anomaly fit|score|eval`: anomaly scores of images, their calibration, and the one-class
//! protocol.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::choice::choice;
use cae::apps::anomaly::{Calibration, Score, score_images, score_set};
use cae::apps::latent_gaussian::{LatentGaussian, path_for_model};
use cae::apps::one_class::{self, ClassResult, csv_field};
use cae::data::ImageSet;

use super::DataArgs;
use super::inputs::{ImageInputs, Inputs, ModelFlags, TrainingFlags};

#[derive(Args)]
pub struct AnomalyArgs {
    #[command(subcommand)]
    command: AnomalyCommand,
}

#[derive(Subcommand)]
enum AnomalyCommand {
    /// Fit the latent Gaussian on normal training images and calibrate every score on normal
    /// validation images; writes <model>.latent.safetensors and <model>.anomaly.json.
    Fit(FitArgs),
    /// Score images or a dataset, one score per image, into a CSV file.
    Score(ScoreArgs),
    /// One-class protocol: train on one class's training images, score all test images, report
    /// the ROC AUC of every score.
    Eval(EvalArgs),
}

pub fn run(args: AnomalyArgs) -> Result<()> {
    match args.command {
        AnomalyCommand::Fit(args) => fit(args),
        AnomalyCommand::Score(args) => score(args),
        AnomalyCommand::Eval(args) => eval(args),
    }
}

#[derive(Args)]
struct FitArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// The normal class (number or name); default: all images are normal.
    #[arg(long)]
    normal_class: Option<String>,
    /// Fit the Gaussian on the first N (normal) training images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Calibrate on the first N (normal) validation images.
    #[arg(long)]
    val_limit: Option<usize>,
    /// False-positive rate on the normal validation images at which the thresholds are set.
    #[arg(long, default_value_t = one_class::DEFAULT_FPR)]
    fpr: f64,
}

fn fit(args: FitArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.fpr) {
        bail!("--fpr must lie in [0, 1], not {}", args.fpr);
    }
    let device = args.data.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let splits = cae::data::load(args.data.dataset, &args.data.data_dir(), 0)?;
    let class = args
        .normal_class
        .as_deref()
        .map(|c| one_class::class_index(&splits.train.class_names, c))
        .transpose()?;
    let normal = |set: ImageSet, limit: Option<usize>| {
        let mut set = match class {
            Some(k) => one_class::class_subset(&set, k),
            None => set,
        };
        if let Some(n) = limit {
            set.truncate(n);
        }
        set
    };
    let train = normal(splits.train, args.train_limit);
    let val = normal(splits.test, args.val_limit);
    let which = match class {
        Some(k) => format!("of class {k} ({})", train.class_names[k]),
        None => "(all classes)".to_string(),
    };

    let gaussian = LatentGaussian::fit_set(&model, &config, &train, &device)?;
    let latent_path = path_for_model(&args.model);
    let source = format!("{} training images {which}", train.len());
    gaussian.save(&latent_path, &args.model, &config, &source)?;
    say!(
        "latent Gaussian of {source} (ridge {:.3e}) -> {}",
        gaussian.ridge,
        latent_path.display()
    );

    let val_scores = score_set(&model, &config, &val, Some(&gaussian), &device)?;
    let source = format!("{} validation images {which}", val.len());
    let mut calibration = Calibration::fit(&val_scores, args.fpr, &source)?;
    let path = calibration.save_for_model(&args.model)?;
    say!(
        "calibration on {source}, thresholds at {:.1}% false positives -> {}",
        100.0 * args.fpr,
        path.display()
    );
    say!(
        "{:<20} {:>12} {:>12} {:>12}",
        "score",
        "mean",
        "std",
        "threshold"
    );
    for (kind, stats) in &calibration.scores {
        say!(
            "{:<20} {:>12.6} {:>12.6} {:>12.6}",
            kind.name(),
            stats.mean,
            stats.std,
            stats.threshold
        );
    }
    if let Some(line) = calibration.detail_fit {
        say!(
            "relative-mse measures from ln(mse) = {:.4} + {:.4} ln(detail) on these images",
            line.intercept,
            line.slope
        );
    }
    Ok(())
}

#[derive(Args)]
struct ScoreArgs {
    /// Trained weights (safetensors or PyTorch .pt).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    inputs: ImageInputs,
    /// mse and ssim need only the model; relative-mse, latent-mahalanobis and combined need
    /// `cae anomaly fit`.
    #[arg(long, default_value = "mse", value_parser = choice::<Score>())]
    score: Score,
    /// CSV file: source,label,<score>,anomalous (anomalous is empty without a calibration).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: super::DeviceArg,
}

fn score(args: ScoreArgs) -> Result<()> {
    let device = args.device.device()?;
    let (model, config) = super::load_model(&args.model, &device)?;
    let gaussian = if args.score.needs_gaussian() {
        Some(LatentGaussian::load_for_model(&args.model)?)
    } else {
        None
    };
    let calibration = Calibration::load_for_model(&args.model)?;
    let (raw, sources, labels) = match args.inputs.load(&args.model, &config, "score")? {
        Inputs::Dataset(set) => {
            let raw = score_set(&model, &config, &set, gaussian.as_ref(), &device)?;
            let labels = set.labels.iter().map(u16::to_string).collect();
            (raw, set.sources, labels)
        }
        Inputs::Files { pixels, sources } => {
            let raw = score_images(&model, &config, &pixels, gaussian.as_ref(), &device)?;
            let labels = vec![String::new(); sources.len()];
            (raw, sources, labels)
        }
    };
    let values = raw.score(args.score, calibration.as_ref())?;
    let threshold = calibration.as_ref().and_then(|c| c.threshold(args.score));
    cae::io::atomic::write_with(&args.out, |w| {
        writeln!(w, "source,label,{},anomalous", args.score.name())?;
        for ((source, label), value) in sources.iter().zip(&labels).zip(&values) {
            let flag = threshold.map_or(String::new(), |t| u8::from(*value > t).to_string());
            writeln!(w, "{},{label},{value},{flag}", csv_field(source))?;
        }
        Ok(())
    })?;
    print!(
        "wrote {} {} scores to {}",
        values.len(),
        args.score.name(),
        args.out.display()
    );
    match (threshold, &calibration) {
        (Some(t), Some(c)) => say!(
            "; {} above the threshold {t:.6} ({:.1}% false positives on {})",
            values.iter().filter(|&&v| v > t).count(),
            100.0 * c.fpr,
            c.source
        ),
        _ => say!(" (no calibration: run `cae anomaly fit` to flag anomalies)"),
    }
    Ok(())
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The normal class (number or name).
    #[arg(
        long,
        required_unless_present = "all_classes",
        conflicts_with = "all_classes"
    )]
    normal_class: Option<String>,
    /// Run every class in turn and print the table with the mean.
    #[arg(long)]
    all_classes: bool,
    /// Show only this score (all are computed and written to auroc.csv).
    #[arg(long, value_parser = choice::<Score>())]
    score: Option<Score>,
    /// Score only the first N test images of each class (default: all test images).
    #[arg(long)]
    test_per_class: Option<usize>,
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    training: TrainingFlags,
    /// Output folder: one run folder per class and auroc.csv; default runs/anomaly-<timestamp>.
    /// Runs already in it are continued (or reused when complete).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not write TensorBoard event files into the class run folders.
    #[arg(long)]
    no_tensorboard: bool,
}

fn eval(args: EvalArgs) -> Result<()> {
    let settings = args.training.settings(&args.data, &args.model, None);
    settings.validate()?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "anomaly-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let splits = cae::data::load(
        settings.data.dataset,
        &settings.data.data_dir,
        settings.run.seed,
    )?;
    let classes: Vec<usize> = match &args.normal_class {
        Some(c) => vec![one_class::class_index(&splits.train.class_names, c)?],
        None => (0..splits.train.class_names.len()).collect(),
    };
    let test = match args.test_per_class {
        Some(n) => one_class::first_per_class(&splits.test, n),
        None => splits.test.clone(),
    };
    say!(
        "one-class protocol: {} test images, {} classes; runs in {}",
        test.len(),
        splits.train.class_names.len(),
        out.display()
    );
    let shown: Vec<Score> = match args.score {
        Some(kind) => vec![kind],
        None => Score::ALL.to_vec(),
    };
    let mut terminal = super::progress::Terminal::new();
    let mut results = Vec::new();
    for class in classes {
        let name = &splits.train.class_names[class];
        let run_dir = out.join(format!("class-{class}-{}", sanitize(name)));
        let started = std::time::Instant::now();
        let result = one_class::evaluate_class(
            &settings,
            &splits,
            class,
            &test,
            &run_dir,
            !args.no_tensorboard,
            &mut terminal,
        )?;
        say!(
            "class {class} ({name}): trained on {} images; {} normal, {} anomalous test images; AUROC {}  [{:.0} s]",
            result.train_images,
            result.normal,
            result.anomalous,
            shown
                .iter()
                .map(|k| format!("{} {:.4}", k.name(), result.auroc[k]))
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64()
        );
        results.push(result);
    }
    print_table(&results, &shown);
    let csv = out.join("auroc.csv");
    write_auroc_csv(&csv, &results)?;
    say!("wrote {}", csv.display());
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn print_table(results: &[ClassResult], shown: &[Score]) {
    let header: Vec<String> = shown.iter().map(|k| format!("{:>19}", k.name())).collect();
    say!("\nROC AUC (normal class vs the rest, higher score = more anomalous)");
    say!("{:<16}{}", "normal class", header.join(""));
    for r in results {
        let cells: Vec<String> = shown
            .iter()
            .map(|k| format!("{:>19.4}", r.auroc[k]))
            .collect();
        say!(
            "{:<16}{}",
            format!("{} {}", r.class, r.name),
            cells.join("")
        );
    }
    if results.len() > 1 {
        let mean = one_class::mean_auroc(results);
        let cells: Vec<String> = shown.iter().map(|k| format!("{:>19.4}", mean[k])).collect();
        say!("{:<16}{}", "mean", cells.join(""));
    }
}

fn write_auroc_csv(path: &Path, results: &[ClassResult]) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("auroc.csv has a folder")?)?;
    cae::io::atomic::write_with(path, |w| {
        let names: Vec<&str> = Score::ALL.iter().map(|k| k.name()).collect();
        writeln!(
            w,
            "class,name,train_images,normal,anomalous,{}",
            names.join(",")
        )?;
        for r in results {
            let values: Vec<String> = Score::ALL.iter().map(|k| r.auroc[k].to_string()).collect();
            writeln!(
                w,
                "{},{},{},{},{},{}",
                r.class,
                csv_field(&r.name),
                r.train_images,
                r.normal,
                r.anomalous,
                values.join(",")
            )?;
        }
        if results.len() > 1 {
            let mean = one_class::mean_auroc(results);
            let values: Vec<String> = Score::ALL.iter().map(|k| mean[k].to_string()).collect();
            writeln!(w, "mean,,,,,{}", values.join(","))?;
        }
        Ok(())
    })
}
