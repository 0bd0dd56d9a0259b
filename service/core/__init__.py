"""What every part of the control plane stands on: settings, the store, auth, errors, job states."""
