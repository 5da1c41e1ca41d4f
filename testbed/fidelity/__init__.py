"""Link fidelity: probe programs measure each direction of an emulated link
(`probe`), `measure` runs them in a run's fidelity phase and `judge` compares the
measurement with what the scenario configured."""
