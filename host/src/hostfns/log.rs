//! `fabric:core/log`: lines into the job's log.

use super::bindings::fabric::core::log::{Host, Level};
use crate::sandbox::TaskState;

impl Host for TaskState {
    async fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        let line = format!("[{level}] {}\n", message.trim_end());
        if let Ok(task) = self.task() {
            task.job.log.append(line.as_bytes());
        }
    }
}
