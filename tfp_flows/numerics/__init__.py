"""Pure TensorFlow numerics under the bijectors: no Keras, no `tfp.bijectors`.

Modules, one idea each: `checks` (argument checks and the NaN-on-non-convergence rule),
`probes` (random probes and uniforms; the one RNG convention: stateless, explicit seeds,
Philox), `trace` (exact and Hutchinson traces, dense Jacobians), `log_det_series`
(log det(I + J) by power series and Russian roulette), `estimators` (specs that carry the
training/evaluation rule), `ode` (ODE solvers and the adjoint), `fixed_point`
(fixed-point solves), `spline` (the rational-quadratic spline kernel and its gradient),
`norm_bounds` (spectral-norm estimates and certified bounds), `optimal_transport`
(minibatch OT pairing), `integer_check` (discrete inputs: pixel values and class
labels), `aliases` (arguments that also take an older spelling).
"""
