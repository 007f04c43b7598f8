"""The spiking core: threshold rules, the IF neuron, LIPooling, the spiking network, monitors and the
simulators. It knows nothing of conversion or experiments."""
