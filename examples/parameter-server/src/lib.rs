//! The parameter-server pattern: one actor holds the parameters; worker tasks
//! pull them, compute a gradient, push it back, and the driver checks the
//! update count equals the number of pushes.
//!
//! ```text
//! fabric submit examples/target/wasm32-wasip2/release/parameter_server.wasm --args '{"workers": 4, "steps": 25}'
//! ```

/// The parameters and how many updates were applied.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ParameterServer {
    params: Vec<f64>,
    updates: u64,
}

#[fabric::actor]
impl ParameterServer {
    /// `dim` parameters, all zero.
    pub fn new(dim: u32) -> Self {
        ParameterServer { params: vec![0.0; dim as usize], updates: 0 }
    }

    /// The current parameters.
    pub fn pull(&self) -> Vec<f64> {
        self.params.clone()
    }

    /// Applies a gradient step; returns the update count.
    pub fn push(&mut self, gradient: Vec<f64>, rate: f64) -> fabric::Result<u64> {
        if gradient.len() != self.params.len() {
            return Err(fabric::Error::InvalidArgument(format!(
                "gradient has {} values, the parameters {}",
                gradient.len(),
                self.params.len()
            )));
        }
        for (p, g) in self.params.iter_mut().zip(gradient) {
            *p -= rate * g;
        }
        self.updates += 1;
        Ok(self.updates)
    }

    /// How many gradients were applied.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

/// One worker: `steps` rounds of pull, gradient of (p - target)^2, push.
#[fabric::task]
fn worker(server: ParameterServerHandle, target: f64, steps: u32) -> fabric::Result<u32> {
    for _ in 0..steps {
        let params = server.pull()?.get()?;
        let gradient: Vec<f64> = params.iter().map(|p| 2.0 * (p - target)).collect();
        server.push(gradient, 0.05)?.get()?;
    }
    Ok(steps)
}

/// What the driver checked.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub pushes: u64,
    pub updates: u64,
    pub ok: bool,
    pub params: Vec<f64>,
}

/// Starts the server and `workers` workers (default 4) of `steps` rounds
/// (default 25) each, all pulling towards 1.0.
#[fabric::task]
fn main(workers: Option<u32>, steps: Option<u32>, dim: Option<u32>) -> fabric::Result<Summary> {
    let (workers, steps) = (workers.unwrap_or(4), steps.unwrap_or(25));
    let server = ParameterServer::new(dim.unwrap_or(8)).remote()?;
    let runs = (0..workers).map(|_| worker.remote(server, 1.0, steps)).collect::<fabric::Result<Vec<_>>>()?;
    let pushes: u64 = fabric::get_all(&runs)?.into_iter().map(u64::from).sum();
    let updates = server.updates()?.get()?;
    let params = server.pull()?.get()?;
    println!("{workers} workers pushed {pushes} gradients");
    Ok(Summary { pushes, updates, ok: updates == pushes, params })
}
