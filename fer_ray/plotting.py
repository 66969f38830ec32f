"""matplotlib without a screen: every figure fer-ray draws (evaluation plots, the shift suite,
`predict --show`, the HTML report) comes from `pyplot()`."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (PNG, no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
