//! The one-class protocol of Ruff et al. ("Deep One-Class Classification", ICML 2018): train on
//! the training images of one class only, score every test image, and measure by ROC AUC how
//! well each score tells the other classes (anomalous) from that class (normal).
//!
//! Unlike the paper, images are not contrast-normalised: they get the model's usual
//! normalization.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::anomaly::{Calibration, Score, score_set};
use super::latent_gaussian::{LatentGaussian, path_for_model};
use super::roc::roc_auc;
use crate::data::{ImageSet, Splits};
use crate::run_folder::{CHECKPOINT_FILE, MODEL_FILE};
use crate::settings::TrainSettings;
use crate::training::Observer;

/// False-positive rate of the thresholds stored with each class's model.
pub const DEFAULT_FPR: f64 = 0.05;

/// The outcome for one normal class.
#[derive(Debug, Clone)]
pub struct ClassResult {
    /// Index of the normal class.
    pub class: usize,
    /// Name of the normal class.
    pub name: String,
    /// ROC AUC of every score on the test images: the normal class against the others.
    pub auroc: BTreeMap<Score, f64>,
    /// Training images of the normal class that the model was trained and calibrated on
    /// (after `--train-limit`).
    pub train_images: usize,
    /// Test images of the normal class.
    pub normal: usize,
    /// Test images of the other classes.
    pub anomalous: usize,
    /// The run folder of the class's model.
    pub run_dir: PathBuf,
}

/// The images of `set` at `indices`, in that order.
pub(crate) fn select(set: &ImageSet, indices: &[usize]) -> ImageSet {
    let mut out = ImageSet {
        channels: set.channels,
        height: set.height,
        width: set.width,
        pixels: Vec::with_capacity(indices.len() * set.image_len()),
        labels: Vec::with_capacity(indices.len()),
        class_names: set.class_names.clone(),
        sources: Vec::with_capacity(indices.len()),
    };
    for &i in indices {
        out.pixels.extend_from_slice(set.image(i));
        out.labels.push(set.labels[i]);
        if let Some(source) = set.sources.get(i) {
            out.sources.push(source.clone());
        }
    }
    out
}

/// The index of a class given by number (`3`) or by name (`cat`).
pub fn class_index(class_names: &[String], text: &str) -> Result<usize> {
    let index = match text.trim().parse::<usize>() {
        Ok(i) => Some(i).filter(|&i| i < class_names.len()),
        Err(_) => class_names.iter().position(|n| n == text.trim()),
    };
    index.with_context(|| {
        format!(
            "no class `{text}`: the classes are 0..{} ({})",
            class_names.len().saturating_sub(1),
            class_names.join(", ")
        )
    })
}

/// The images of class `class` only.
pub fn class_subset(set: &ImageSet, class: usize) -> ImageSet {
    let indices: Vec<usize> = (0..set.len())
        .filter(|&i| usize::from(set.labels[i]) == class)
        .collect();
    select(set, &indices)
}

/// The first `n` images of every class, in the set's order.
pub fn first_per_class(set: &ImageSet, n: usize) -> ImageSet {
    let mut taken = vec![0usize; set.class_names.len().max(1)];
    let indices: Vec<usize> = (0..set.len())
        .filter(|&i| {
            let class = usize::from(set.labels[i]);
            if class >= taken.len() {
                taken.resize(class + 1, 0);
            }
            taken[class] += 1;
            taken[class] <= n
        })
        .collect();
    select(set, &indices)
}

/// Runs the protocol for normal class `class`: trains in `run_dir` (continuing a run already
/// there) on that class's training images, fits the latent Gaussian and the calibration on them
/// (saved beside the model), scores `test` and measures every score's ROC AUC. Writes
/// `run_dir/test_scores.csv`, and TensorBoard event files when `tensorboard` is set.
pub fn evaluate_class(
    settings: &TrainSettings,
    splits: &Splits,
    class: usize,
    test: &ImageSet,
    run_dir: &Path,
    tensorboard: bool,
    observer: &mut dyn Observer,
) -> Result<ClassResult> {
    let classes = &splits.train.class_names;
    ensure!(
        class < classes.len(),
        "class {class} does not exist: the dataset has {} classes ({})",
        classes.len(),
        classes.join(", ")
    );
    let name = classes[class].clone();
    let mut normal_train = class_subset(&splits.train, class);
    let one_class = Splits {
        train: normal_train.clone(),
        test: class_subset(&splits.test, class),
    };
    let resume = run_dir.join(CHECKPOINT_FILE).exists();
    crate::training::train(
        settings,
        one_class,
        run_dir,
        crate::training::RunOptions {
            resume,
            tensorboard,
        },
        observer,
    )
    .with_context(|| format!("training on class {class} ({name})"))?;

    let device = settings.run.device.device()?;
    let model_path = run_dir.join(MODEL_FILE);
    let (model, config) = crate::io::weights::load_model(&model_path, &device)?;
    if let Some(n) = settings.data.train_limit {
        normal_train.truncate(n);
    }
    let source = format!(
        "{} training images of class {class} ({name})",
        normal_train.len()
    );
    let mut train_scores = score_set(&model, &config, &normal_train, None, &device)?;
    let gaussian = LatentGaussian::fit(&train_scores.codes, config.latent)?;
    gaussian.save(&path_for_model(&model_path), &model_path, &config, &source)?;
    train_scores.set_gaussian(&gaussian)?;
    let mut calibration = Calibration::fit(&train_scores, DEFAULT_FPR, &source)?;
    calibration.save_for_model(&model_path)?;

    let test_scores = score_set(&model, &config, test, Some(&gaussian), &device)?;
    let is_normal: Vec<bool> = test
        .labels
        .iter()
        .map(|&l| usize::from(l) == class)
        .collect();
    let mut auroc = BTreeMap::new();
    let mut columns = Vec::new();
    for kind in Score::ALL {
        let values = test_scores.score(kind, Some(&calibration))?;
        let pick = |normal: bool| -> Vec<f64> {
            values
                .iter()
                .zip(&is_normal)
                .filter(|&(_, &n)| n == normal)
                .map(|(&v, _)| v)
                .collect()
        };
        let auc = roc_auc(&pick(true), &pick(false))
            .with_context(|| format!("ROC AUC of {} for class {class}", kind.name()))?;
        auroc.insert(kind, auc);
        columns.push(values);
    }
    write_scores_csv(&run_dir.join("test_scores.csv"), test, &is_normal, &columns)?;
    let normal = is_normal.iter().filter(|&&n| n).count();
    Ok(ClassResult {
        class,
        name,
        auroc,
        train_images: normal_train.len(),
        normal,
        anomalous: test.len() - normal,
        run_dir: run_dir.to_path_buf(),
    })
}

fn write_scores_csv(
    path: &Path,
    test: &ImageSet,
    is_normal: &[bool],
    columns: &[Vec<f64>],
) -> Result<()> {
    crate::io::atomic::write_with(path, |w| {
        let names: Vec<&str> = Score::ALL.iter().map(|s| s.name()).collect();
        writeln!(w, "source,label,normal,{}", names.join(","))?;
        for i in 0..test.len() {
            let source = test.sources.get(i).map_or("", String::as_str);
            let values: Vec<String> = columns.iter().map(|c| c[i].to_string()).collect();
            writeln!(
                w,
                "{},{},{},{}",
                csv_field(source),
                test.labels[i],
                u8::from(is_normal[i]),
                values.join(",")
            )?;
        }
        Ok(())
    })
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Mean ROC AUC of each score over `results`.
pub fn mean_auroc(results: &[ClassResult]) -> BTreeMap<Score, f64> {
    Score::ALL
        .iter()
        .map(|&kind| {
            let sum: f64 = results.iter().map(|r| r.auroc[&kind]).sum();
            (kind, sum / results.len().max(1) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{class_subset, first_per_class};
    use crate::data::ImageSet;

    fn set() -> ImageSet {
        ImageSet {
            channels: 1,
            height: 1,
            width: 2,
            pixels: (0..12).collect(),
            labels: vec![0, 1, 0, 2, 1, 0],
            class_names: vec!["a".into(), "b".into(), "c".into()],
            sources: (0..6).map(|i| format!("#{i}")).collect(),
        }
    }

    #[test]
    fn subsets_keep_images_labels_and_sources_together() {
        let zeros = class_subset(&set(), 0);
        assert_eq!(zeros.labels, vec![0, 0, 0]);
        assert_eq!(zeros.pixels, vec![0, 1, 4, 5, 10, 11]);
        assert_eq!(zeros.sources, vec!["#0", "#2", "#5"]);
        assert_eq!(zeros.class_names.len(), 3);
        let names = set().class_names;
        assert_eq!(super::class_index(&names, "2").unwrap(), 2);
        assert_eq!(super::class_index(&names, "b").unwrap(), 1);
        assert!(super::class_index(&names, "3").is_err());
        assert!(super::class_index(&names, "d").is_err());
        let firsts = first_per_class(&set(), 1);
        assert_eq!(firsts.labels, vec![0, 1, 2]);
        assert_eq!(firsts.pixels, vec![0, 1, 2, 3, 6, 7]);
    }
}
