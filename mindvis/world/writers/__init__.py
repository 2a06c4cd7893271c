"""One module per release the synthetic world writes, each with ``write(world, root)``: :mod:`.hcp`, :mod:`.god`,
:mod:`.bold5000`, :mod:`.nsd`, :mod:`.things_meg` and :mod:`.things_eeg2`; :mod:`.meta` writes the ``meta.json``
they all end with."""
