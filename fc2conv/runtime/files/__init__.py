"""Files fc2conv writes, for both sides: every output atomic or staged and committed together (`atomic`), and
outputs kept apart from each other and from the inputs (`paths`). Torch-free; the modules import nothing here."""
