"""Demo drivers (`make demo*`) and the support desk's data generators; nothing imports them."""
