"""`medal pipeline`: the whole system as resumable stages, and its report."""
