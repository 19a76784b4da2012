"""Fine-tuning Code Llama on a team's repositories: FIM data, infilling and long-context stages."""
