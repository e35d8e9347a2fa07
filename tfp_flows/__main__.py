"""`python -m tfp_flows`: the command line of `tfp_flows.cli`."""

from tfp_flows.cli.app import run

if __name__ == "__main__":
  run()
