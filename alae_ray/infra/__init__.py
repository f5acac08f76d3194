"""What every command shares, above the core and the data layer: the Ray session and its preflight
(``ray_session``), the progress board that bounds every wait (``board``), and finding checkpoints
(``checkpoints``). Train, eval, serve and tune import it; it imports none of them."""
