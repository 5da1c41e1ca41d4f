"""DeepCOD (Yao et al., SenSys 2020): a tiny learned sampling encoder and a quantizer
on the device, entropy coding on the wire, a heavy decoder before the unmodified model
on the edge. `model.py` holds the networks, `train.py` the one training command."""
