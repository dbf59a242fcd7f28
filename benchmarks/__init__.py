"""Reproducible speed and accuracy measurements of LazyLLM (Fu et al. 2024). Never imported by the library."""
