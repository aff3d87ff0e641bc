"""Methods as LightningModules: zero-shot, prompt tuning (CoOp / PTNL / DP-SEP and ablations), TANGO."""
