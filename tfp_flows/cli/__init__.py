"""Command line: python -m tfp_flows {train,sample,evaluate,export} [--flags]

  train     fits --preset (glow, nsf, residual, ffjord, tarflow) to --dataset
            (two_moons, ring, checkerboard, digits, digits_vectors, fashion_mnist, npy
            with --data_file) and writes --output_dir: model.keras, run.json, a PNG
            (image grid or 2-D density) and, unless --noexport_saved_model, the
            SavedModel saved_model/;
            prints held-out NLL. --logdir adds TensorBoard summaries (metrics,
            per-layer log-dets, an invertibility check). Training backs up to
            --output_dir/backup; the same command resumes an interrupted run.
  sample    loads --model_dir and writes --num_samples samples as samples.npy and
            samples.png.
  evaluate  prints the held-out NLL of --model_dir (nats per row; bits/dim for images
            and integer data), on the run's held-out split or on --data_file.
  export    writes --model_dir's SavedModel to --export_dir (tfp_flows.export.save).

With no command and no flags it trains Glow on scikit-learn's 8x8 digits.
--model_dir defaults to --output_dir, which defaults to runs/<preset>_<dataset>.
User errors (bad flag values, missing model directory, malformed input file) print one
message to stderr and exit with status 2. --helpfull lists every flag.

The digits and the 2-D toys need scikit-learn and the PNG plots matplotlib, which the
library itself does not: `pip install 'tfp_flows[cli]'`. Without them the command line
says which package is missing.
"""
