"""Classical baselines to compare the network with: maximum-likelihood fitting and matching pursuit."""
