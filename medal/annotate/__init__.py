"""`medal annotate`: the human in the loop on real data, in the browser.

Two modes over one small local web app (`app.py`): **masks** (the folder oracle's current round: correct the
committee's proposal, accept through the oracle's own checks, `rounds.py`) and **gold** (the gold standards the
enhance stage asked for, `request.py`: sliders over one pure transform, `adjust.py`). `serve.py` opens what the
config names and serves it on 127.0.0.1 behind a gate (`guard.py`) that answers only the page opened at the printed
address: a per-launch secret, the bound Host names, the page's own origin (`access.py`).
"""
