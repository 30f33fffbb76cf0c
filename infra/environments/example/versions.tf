terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80.0, < 6.0.0"
    }
  }

  # State holds generated secrets (database and Redis passwords, JWT secret): keep it in an
  # encrypted, access-controlled bucket. Partial configuration:
  #   terraform init -backend-config=backend.hcl   (see backend.hcl.example)
  backend "s3" {}
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = {
      Project     = "chatty"
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
