//! Training: the [`Trainer`] that owns a run (model, Adam, run state, run folder) and goes
//! through it in steps, the [`Event`]s it reports to an [`Observer`], and one Adam step on MSE.

mod divergence;
mod events;
pub(crate) mod memory;
mod step;
mod trainer;

pub use divergence::Interrupted;
pub use events::{Event, Observer, Phase};
pub(crate) use step::train_step;
#[cfg(test)]
pub(crate) use step::train_step_variational;
pub use trainer::{RunOptions, TrainOutcome, Trainer};
pub use trainer::{model_config, train};
