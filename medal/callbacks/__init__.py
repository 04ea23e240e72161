"""Lightning callbacks: fixed fine-tune modes and paced transfer learning."""
