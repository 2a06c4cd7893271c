"""``mindvis-scaling``: how decoding grows with training data and test repetitions, per decoder, over seeds."""
