//! The library's enums as flag values. The library knows nothing of clap, so its types do not
//! derive `ValueEnum`; this maps their names to values, and lists them (with a line of help)
//! in `--help` and in the error for an unknown name, as a derived `ValueEnum` would.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use cae::apps::anomaly::Score;
use cae::data::DatasetKind;
use cae::io::onnx::Part;

/// A library enum that a flag takes by name.
pub trait Choice: Copy + Send + Sync + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    fn help(self) -> Option<&'static str> {
        None
    }
}

/// The value parser of a [`Choice`] flag: `#[arg(value_parser = choice::<T>())]`.
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|&value| {
        let possible = PossibleValue::new(value.name());
        match value.help() {
            Some(help) => possible.help(help),
            None => possible,
        }
    });
    PossibleValuesParser::new(values).map(|name: String| {
        *T::ALL
            .iter()
            .find(|value| value.name() == name)
            .expect("clap accepts only the listed names")
    })
}

impl Choice for DatasetKind {
    const ALL: &'static [Self] = &DatasetKind::ALL;

    fn name(self) -> &'static str {
        DatasetKind::name(self)
    }

    fn help(self) -> Option<&'static str> {
        Some(match self {
            DatasetKind::Cifar10 => {
                "CIFAR-10 in its official binary layout (downloaded when missing)"
            }
            DatasetKind::Folder => "`ROOT/train/<class>/*` and `ROOT/test/<class>/*` image files",
            DatasetKind::Mnist => {
                "MNIST digits in IDX format (`train-images-idx3-ubyte[.gz]`, ...)"
            }
            DatasetKind::FashionMnist => {
                "Fashion-MNIST in IDX format; Debian's `dataset-fashion-mnist` copy is found by default"
            }
        })
    }
}

impl Choice for Score {
    const ALL: &'static [Self] = &Score::ALL;

    fn name(self) -> &'static str {
        Score::name(self)
    }
}

impl Choice for Part {
    const ALL: &'static [Self] = &Part::ALL;

    fn name(self) -> &'static str {
        Part::name(self)
    }

    fn help(self) -> Option<&'static str> {
        Some(match self {
            Part::Full => "images -> reconstruction",
            Part::Encoder => "images -> codes",
            Part::Decoder => "codes -> reconstruction",
        })
    }
}
