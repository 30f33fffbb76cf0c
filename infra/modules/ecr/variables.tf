variable "name" {
  description = "Name of the ECR repository (e.g. \"chatty\")."
  type        = string
}

variable "keep_tagged_images" {
  description = "How many tagged images the lifecycle policy keeps (older ones expire)."
  type        = number
  default     = 50
}

variable "untagged_expiry_days" {
  description = "Days after which untagged images (superseded layers of multi-arch pushes, failed pushes) expire."
  type        = number
  default     = 7
}

variable "force_delete" {
  description = "Allow Terraform to delete the repository while it still holds images."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for image encryption. null uses AES256 with an AWS-owned key."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
